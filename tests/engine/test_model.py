"""The engine's model against transformers on the same checkpoint: logits position by
position (dense and every quantized scheme, transformers + compressed-tensors
decompressing the quantized ones) and greedy generation token for token."""
from __future__ import annotations

import pytest
import torch

from llmpress.engine import LLM, SamplingParams, extension, linear
from llmpress.engine.llm_engine import EngineConfig, LLMEngine
from llmpress.engine.model import AttnSegment, BatchMeta
from llmpress.eval.perplexity import load_model


def test_tiny_dense_logits_match_transformers(tiny_llama, compare):
    ids = torch.randint(0, 49152, (1, 100), generator=torch.Generator().manual_seed(0))
    top1, gaps = compare(tiny_llama, [ids])
    worst = gaps.max().item()
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
# float32 with identical dequantized weights, so only summation order differs (MKL vs our
# kernels). W4A16_ASYM is compared with the decompressed (bf16-rounded weights) reading, see
# conftest._transformers_model: a 2^-9 relative change on every weight moves logits by ~1.
TOLERANCE = {"dense": 2e-3, "W4A16": 5e-3, "W4A16_ASYM": 1.5}
# W8A8 and FP8_DYNAMIC quantize activations per token at run time. Their linear layers equal
# transformers' exactly given the same input (test_act_quant_linear_equals_reference), but
# the whole model is chaotic: transformers against itself with 1e-6 relative input noise
# agrees on only ~91-95% of top-1 tokens (conftest._noise_floor). The engine is held to
# that measured floor: top-1 minus 2 points (the sampling noise of 2,048 positions), and
# the per-position max |Δlogit| at its median and 99th percentile within 1.25x the floor's.
# Not the maximum: over 2,048 chaotic positions it is one draw of a heavy tail (the floor's
# own ranged 3.6-7.6 across three noise seeds at W8A8 while its median moved 2%).
ACT_QUANT = ("W8A8", "FP8_DYNAMIC")


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["dense", "W4A16", "W4A16_ASYM", "W8A8", "FP8_DYNAMIC"])
def test_default_model_logits_agree_with_transformers(scheme, default_model, default_checkpoints, lee_windows, compare, noise_floor):
    folder = default_model if scheme == "dense" else default_checkpoints[scheme]
    top1, gaps = compare(folder, lee_windows)
    q = torch.tensor([0.5, 0.99])
    print(f"{scheme}: top-1 {100 * top1:.2f}% over {gaps.numel()} positions, |Δlogit| median / p99 / max "
          f"{' / '.join(f'{v:.2e}' for v in [*gaps.quantile(q).tolist(), gaps.max().item()])}")
    if scheme in ACT_QUANT:
        floor_top1, floor_gaps = noise_floor(folder, lee_windows)
        ours, floor = gaps.quantile(q), floor_gaps.quantile(q)
        print(f"{scheme}: transformers vs itself under 1e-6 input noise: top-1 {100 * floor_top1:.2f}%, "
              f"median / p99 {floor[0]:.2f} / {floor[1]:.2f}")
        assert top1 >= floor_top1 - 0.02 and (ours <= 1.25 * floor).all(), (top1, floor_top1, ours, floor)
    else:
        assert top1 >= 0.99 and gaps.max().item() <= TOLERANCE[scheme], (top1, gaps.max().item())


@pytest.mark.slow
@pytest.mark.skipif(not extension.amx_available(), reason="needs a CPU with AMX")
@pytest.mark.parametrize("scheme", ["dense", "W4A16", "W4A16_ASYM"])
def test_amx_logits_agree_with_transformers(scheme, default_model, default_checkpoints, lee_windows, compare, monkeypatch):
    """The same check with every linear layer, lm_head included, on the AMX GEMM (at every M, not
    only linear.amx_m's), whose activations are split into two bf16 parts: held to the float32
    tolerances above."""
    for cls in (linear.QuantizedWeight, linear.Int4Weight):
        monkeypatch.setattr(cls, "amx_m", (1, 10**9))
    folder = default_model if scheme == "dense" else default_checkpoints[scheme]
    top1, gaps = compare(folder, lee_windows)
    worst = gaps.max().item()
    print(f"{scheme}, AMX: top-1 {100 * top1:.2f}%, max|Δlogit| {worst:.2e}")
    assert top1 >= 0.99 and worst <= TOLERANCE[scheme], (top1, worst)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ACT_QUANT)
def test_act_quant_linear_equals_transformers(scheme, default_checkpoints, lee_windows, transformers_model):
    """One quantized linear fed transformers' own input: the engine's output equals
    transformers + compressed-tensors' (FP8: bit for bit in float32). For W8A8, compressed-
    tensors' fake quantization divides by 127.5 where vLLM (the engine's model) divides by
    127: with that one change the engine's reference path reproduces transformers too."""
    import json

    from safetensors import safe_open

    from llmpress.engine.linear import make_weight
    from llmpress.quant import QuantArgs

    folder = default_checkpoints[scheme]
    hf, _ = transformers_model(folder)
    mod = hf.model.layers[3].mlp.down_proj
    seen = {}
    handle = mod.register_forward_hook(lambda m, i, o: seen.update(x=i[0][0].detach().clone(), y=o[0].detach().clone()))
    with torch.no_grad():
        hf(lee_windows[0][:, :256])
    handle.remove()
    key = "model.layers.3.mlp.down_proj.weight"
    tensors = {}
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if k.startswith(key):
                    tensors[k[len("model.layers.3.mlp.down_proj."):]] = st.get_tensor(k)
    group = json.loads((folder / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    w = make_weight(tensors, QuantArgs.from_ct(group["weights"]), QuantArgs.from_ct(group["input_activations"]))
    x, y = seen["x"], seen["y"]
    if scheme == "FP8_DYNAMIC":
        assert (w(x) - y).abs().max().item() <= 1e-4 * y.abs().max().item()
    else:
        s = x.abs().amax(-1, keepdim=True) / 127.5  # compressed-tensors' int8 range 255 / 2
        ct = (torch.round(x / s).clamp(-128, 127) * s) @ w.dequantize().float().T
        assert (ct - y).abs().max().item() <= 1e-4 * y.abs().max().item()
        assert (w(x) - y).abs().max().item() > 10 * (ct - y).abs().max().item()  # the /127 vs /127.5 difference is real


@pytest.mark.slow
def test_w4a16_weights_stay_compressed(default_model, default_checkpoints):
    dense = LLMEngine(EngineConfig(model=str(default_model), dtype="bfloat16", kv_cache_memory_bytes=16 << 20)).model.weight_bytes()
    w4 = LLMEngine(EngineConfig(model=str(default_checkpoints["W4A16"]), kv_cache_memory_bytes=16 << 20)).model.weight_bytes()
    ratio = w4["linears"] / dense["linears"]
    print(f"W4A16 decoder linears {w4['linears'] / 2**20:.1f} MiB vs bf16 {dense['linears'] / 2**20:.1f} MiB: {ratio:.3f}x")
    assert ratio <= 0.35
