"""The vLLM-shaped offline API on a tiny random Llama: batching equals one-at-a-time,
sampling parameters do what they say, bad input gets a clear error."""
from __future__ import annotations

import pytest
import torch

from llmpress.engine import LLM, SamplingError, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), kv_cache_memory_bytes=32 << 20, max_num_batched_tokens=64, max_model_len=512)


PROMPTS = ["Hello there", "The quick brown fox jumps over", "1, 2, 3, 4,", "Why is the sky blue? Because"]


def test_batched_greedy_equals_one_at_a_time(llm):
    """Continuous batching with chunked prefill (64-token budget) changes nothing."""
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    long_prompt = "word " * 150  # needs three prefill chunks while others decode
    prompts = PROMPTS + [long_prompt]
    together = llm.generate(prompts, greedy, use_tqdm=False)
    for p, out in zip(prompts, together):
        alone = llm.generate(p, greedy, use_tqdm=False)[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
        assert len(out.outputs[0].token_ids) == 20 and out.outputs[0].finish_reason == "length"


def test_output_shape_and_text(llm):
    out = llm.generate({"prompt_token_ids": [1, 2, 3, 4]}, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True), use_tqdm=False)[0]
    c = out.outputs[0]
    assert out.prompt_token_ids == [1, 2, 3, 4] and out.finished
    assert c.text == llm.get_tokenizer().decode(c.token_ids, skip_special_tokens=True)


def test_seed_reproduces_and_n_gives_distinct_samples(llm):
    p = SamplingParams(temperature=1.0, max_tokens=12, seed=7, n=3, ignore_eos=True)
    a = llm.generate("Tell me", p, use_tqdm=False)[0]
    b = llm.generate("Tell me", p, use_tqdm=False)[0]
    assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
    assert len({tuple(c.token_ids) for c in a.outputs}) > 1


def test_top_k_1_is_greedy(llm):
    g = llm.generate("Tell me", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)[0]
    k = llm.generate("Tell me", SamplingParams(temperature=1.5, top_k=1, max_tokens=8, seed=3, ignore_eos=True), use_tqdm=False)[0]
    assert g.outputs[0].token_ids == k.outputs[0].token_ids


def test_stop_token_ids_and_stop_strings(llm):
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    ref = llm.generate("Hello there", greedy, use_tqdm=False)[0].outputs[0]
    stop_id = ref.token_ids[5]
    first = ref.token_ids.index(stop_id)
    out = llm.generate(
        "Hello there",
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop_token_ids=[stop_id]),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.token_ids == ref.token_ids[: first + 1] and out.finish_reason == "stop" and out.stop_reason == stop_id
    # a stop string from the middle of the reference text cuts the text right before it
    tail = ref.text[len(ref.text) // 2 :].strip()[:3]
    if tail:
        s = llm.generate(
            "Hello there", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, stop=[tail]), use_tqdm=False
        )[0].outputs[0]
        assert s.finish_reason == "stop" and s.stop_reason == tail
        assert s.text == ref.text[: ref.text.find(tail)]


def test_min_tokens_blocks_stop(llm):
    greedy = dict(temperature=0, max_tokens=10, ignore_eos=True)
    ref = llm.generate("Hello", SamplingParams(**greedy), use_tqdm=False)[0].outputs[0]
    stop_id = ref.token_ids[0]
    out = llm.generate("Hello", SamplingParams(**greedy, stop_token_ids=[stop_id], min_tokens=4), use_tqdm=False)[
        0
    ].outputs[0]
    assert len(out.token_ids) >= 4 and stop_id not in out.token_ids[:4]


def test_penalties_change_repetition(llm):
    base = llm.generate("a a a a a a", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True), use_tqdm=False)[
        0
    ].outputs[0]
    pen = llm.generate(
        "a a a a a a",
        SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, frequency_penalty=2.0),
        use_tqdm=False,
    )[0].outputs[0]
    assert len(set(pen.token_ids)) > len(set(base.token_ids))


def test_logprobs_and_prompt_logprobs_match_full_forward(llm, tiny_llama):
    from transformers import AutoModelForCausalLM

    ids = [1, 500, 900, 1200, 77, 31]
    out = llm.generate(
        {"prompt_token_ids": ids},
        SamplingParams(temperature=0, max_tokens=3, logprobs=2, prompt_logprobs=1, ignore_eos=True),
        use_tqdm=False,
    )[0]
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    full = ids + out.outputs[0].token_ids
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([full])).logits[0].float(), -1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    for pos in range(1, len(ids)):
        got = out.prompt_logprobs[pos][ids[pos]].logprob
        assert abs(got - lp[pos - 1, ids[pos]].item()) < 1e-3
    for j, (tok, d) in enumerate(zip(out.outputs[0].token_ids, out.outputs[0].logprobs)):
        row = lp[len(ids) - 1 + j]
        assert abs(d[tok].logprob - row[tok].item()) < 1e-3 and d[tok].rank == 1
        assert len(d) == 2  # greedy pick is the top-1, plus the second best
    assert (
        abs(
            out.outputs[0].cumulative_logprob
            - sum(d[t].logprob for t, d in zip(out.outputs[0].token_ids, out.outputs[0].logprobs))
        )
        < 1e-4
    )


def test_small_cache_makes_requests_wait_not_fail(tiny_llama):
    """A cache of 8 blocks x 16 tokens holds about two of these sequences at a time:
    the rest wait (or get preempted and recomputed) and all finish identically."""
    small = LLM(str(tiny_llama), kv_cache_memory_bytes=8 * 16 * 2 * 2 * 2 * 32 * 4, max_model_len=128)
    assert small.engine.blocks.num_blocks == 8
    greedy = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    outs = small.generate(PROMPTS, greedy, use_tqdm=False)
    for p, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == small.generate(p, greedy, use_tqdm=False)[0].outputs[0].token_ids
    assert small.engine.blocks.num_free == 8


def test_chat_uses_the_template(llm):
    out = llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    assert "<|im_start|>assistant" in out.prompt and out.prompt.rstrip().endswith("assistant")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_tokens=-1), "max_tokens"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(stop=[1, 2]), "stop"),
        (dict(stop=5), "stop"),
        (dict(temperature=-1), "temperature"),
        (dict(n=0), "n="),
    ],
)
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(SamplingError, match=match):
        SamplingParams(**kwargs)


def test_bad_prompts(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate("", use_tqdm=False)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate({"prompt_token_ids": [5] * 600}, use_tqdm=False)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate({"prompt_token_ids": [10**7]}, use_tqdm=False)
    with pytest.raises(TypeError, match="unknown arguments"):
        LLM("default", gpu_memory_utilisation=0.5)
