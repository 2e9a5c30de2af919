"""lm-eval 0.4.13's `local-completions` model, unmodified, drives the real server: a
loglikelihood task and a generate_until task (offline MMLU from packaged data), with
lm-eval's remote tokenizer (our /tokenizer_info, /tokenize, /detokenize). Every
loglikelihood it reports must equal the engine's own, computed directly."""
from __future__ import annotations

import math

import pytest

from llmpress.engine import SamplingParams

lm_eval = pytest.importorskip("lm_eval")

LIMIT = 12  # documents per task: 48 loglikelihood requests (4 choices each) and 12 generations


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    from llmpress.eval.tasks import TaskDataError, prepare

    try:  # 1-shot keeps prompts inside the tiny model's 512-token context
        return prepare(["mmlu", "mmlu_gen"], tmp_path_factory.mktemp("tasks"), num_fewshot=1)
    except TaskDataError as e:
        pytest.skip(str(e))


def test_lm_eval_local_completions_matches_engine(idle, ref, tasks):
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    include, names = tasks
    lm = get_model("local-completions")(
        base_url=f"{idle.url}/v1/completions", model="tiny-llama", tokenizer_backend="remote",
        num_concurrent=4, max_retries=1, max_length=512, timeout=600,
    )
    res = simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(include)),
                          limit=LIMIT, log_samples=True, bootstrap_iters=0)

    mc, gen = res["samples"]["llmpress_mmlu"], res["samples"]["llmpress_mmlu_gen"]
    assert len(mc) == LIMIT and len(gen) == LIMIT
    assert 0.0 <= res["results"]["llmpress_mmlu"]["acc,none"] <= 1.0

    # loglikelihoods: lm-eval's numbers against the engine's prompt logprobs on the same tokens
    pairs, reported = [], []
    for s in mc:
        for (context, continuation), resp in zip(s["arguments"], s["resps"]):
            pairs.append(lm._encode_pair(context, continuation))
            reported.append(resp[0])
    assert len(pairs) == 4 * LIMIT
    outs = ref.generate([{"prompt_token_ids": c + k} for c, k in pairs],
                        SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    for (c, k), out, (ll, greedy) in zip(pairs, outs, reported):
        mine = sum(out.prompt_logprobs[len(c) + j][tok].logprob for j, tok in enumerate(k))
        assert math.isfinite(ll) and abs(ll - mine) <= 1e-4 * max(1.0, abs(mine)), (ll, mine)

    # generate_until: the server's greedy text is what the engine generates for the same prompt
    tok = ref.get_tokenizer()
    for s in gen[:4]:
        prompt = s["arguments"][0][0]
        want = ref.generate(tok.encode(prompt, add_special_tokens=False),
                            SamplingParams(temperature=0, max_tokens=4, stop=["\n"]), use_tqdm=False)[0].outputs[0].text
        assert s["resps"][0][0] == want
