"""The embedded engine as an lm-eval model must score exactly what lm-eval's own `hf`
model scores on the same dense checkpoint: loglikelihoods (and greedy flags) of a few
hundred requests, rolling loglikelihoods, and greedy generations."""
from __future__ import annotations

import random

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

WORDS = ("the cat sat on a mat while rain fell over quiet hills and rivers ran toward an old stone bridge "
         "where merchants sold bread salt iron and wool to travellers from the north").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def models(tiny_llama):
    from lm_eval.models.huggingface import HFLM

    from llmpress.eval.lm import EngineLM

    ours = EngineLM(str(tiny_llama), max_length=256, kv_cache_memory_bytes=64 << 20, max_model_len=258, dtype="float32")
    hf = HFLM(pretrained=str(tiny_llama), dtype="float32", batch_size=16, max_length=256, device="cpu")
    return ours, hf


def test_loglikelihood_equals_lm_eval_hf(models):
    ours, hf = models
    rng = random.Random(0)
    args = []
    for i in range(300):  # contexts of 1..60 words (some over-long to exercise truncation), 1..8-word continuations
        ctx = _text(rng, rng.randint(1, 60)) if i % 50 else ""
        args.append((ctx, " " + _text(rng, rng.randint(1, 8)) if ctx else _text(rng, 3)))
    args.append((_text(rng, 400), " bridge"))  # longer than max_length: left-truncated by both
    mine = ours.loglikelihood(_requests("loglikelihood", args), disable_tqdm=True)
    ref = hf.loglikelihood(_requests("loglikelihood", args), disable_tqdm=True)
    assert len(mine) == len(ref) == len(args)
    worst = max(abs(a[0] - b[0]) / max(1.0, abs(b[0])) for a, b in zip(mine, ref))
    assert worst < 1e-4, worst
    assert sum(a[1] == b[1] for a, b in zip(mine, ref)) >= len(args) - 1  # greedy flags (ties aside)


def test_rolling_and_generation_equal_lm_eval_hf(models):
    ours, hf = models
    rng = random.Random(1)
    docs = [(_text(rng, n),) for n in (5, 120, 700)]  # the last spans several 256-token windows
    mine = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", docs), disable_tqdm=True)
    ref = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", docs), disable_tqdm=True)
    for a, b in zip(mine, ref):
        assert abs(a - b) <= 1e-4 * abs(b), (a, b)

    gen = [(_text(rng, 20), {"until": ["river", "\n"], "max_gen_toks": 12, "do_sample": False}) for _ in range(6)]
    assert ours.generate_until(_requests("generate_until", gen), disable_tqdm=True) == \
        hf.generate_until(_requests("generate_until", gen), disable_tqdm=True)


def test_multiple_choice_shared_context_equals_lm_eval_hf(models):
    """Four one-token continuations of one context are scored from one prefill."""
    ours, hf = models
    rng = random.Random(2)
    args = []
    for _ in range(40):
        ctx = _text(rng, rng.randint(5, 80)) + "\nAnswer:"
        args += [(ctx, f" {c}") for c in "ABCD"]
    mine = ours.loglikelihood(_requests("loglikelihood", args), disable_tqdm=True)
    ref = hf.loglikelihood(_requests("loglikelihood", args), disable_tqdm=True)
    assert max(abs(a[0] - b[0]) / max(1.0, abs(b[0])) for a, b in zip(mine, ref)) < 1e-4
    assert [a[1] for a in mine] == [b[1] for b in ref]
