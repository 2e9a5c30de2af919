"""prefill_dtype="bfloat16": the dequantize + GEMM path rounds x and W to bf16 (as GPUs run W4A16) and
stays within bf16's error of the float32 reference; float32 stays exact; the engine sets it on every
linear and still matches transformers."""
from __future__ import annotations

import pytest
import torch

from llmpress.checkpoint.compressed_tensors import compress_linear
from llmpress.compress.observers import minmax_qparams
from llmpress.engine import LLM, SamplingParams, extension, linear
from llmpress.quant import FP8_DTYPE, FP8_PER_TOKEN, INT8_PER_TOKEN, QuantArgs, Scheme, quantize

N, K, M = 192, 256, 300  # M above every fused / AMX threshold: the dequantize + GEMM path on any CPU

W_ARGS = {
    "W4A16": (QuantArgs(4, "int", True, "group", 64), None),
    "W8A16": (QuantArgs(8, "int", True, "channel"), None),
    "W8A8": (QuantArgs(8, "int", True, "channel"), INT8_PER_TOKEN),
    "FP8_DYNAMIC": (QuantArgs(8, "float", True, "channel"), FP8_PER_TOKEN),
}


def _weight(name: str) -> linear.QuantizedWeight:
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(1)) * 0.05
    if name in ("dense-bf16", "dense-fp32"):
        return linear.DenseWeight(w.bfloat16() if name == "dense-bf16" else w)
    args, act = W_ARGS[name]
    scale, zp = minmax_qparams(w, args, torch.bfloat16 if args.type == "int" else torch.float32)
    q = quantize(w, scale, zp, args)
    return linear.make_weight(compress_linear(q.to(FP8_DTYPE) if args.type == "float" else q, scale, zp,
                                              Scheme(name, args, act)), args, act)


def _db(err: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * torch.log10(err.double().pow(2).mean() / ref.double().pow(2).mean()).item()


@pytest.mark.parametrize("name", [*W_ARGS, "dense-bf16", "dense-fp32"])
def test_bf16_prefill_is_within_bf16_error_and_float32_stays_exact(name):
    w = _weight(name)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(2))
    ref = w.reference(x)
    exact = w(x)
    w.prefill_dtype = torch.bfloat16
    rounded = w(x)
    assert rounded.dtype == torch.float32 and rounded.shape == (M, N)
    assert _db(exact - ref, ref) < -100  # float32: the reference's product, to rounding order
    # bf16 (8-bit mantissa) on x and W: about -50 dB; the bound also proves the setting was honoured
    assert -70 < _db(rounded - ref, ref) < -40


@pytest.mark.parametrize("name", ["W4A16", "W8A16", "dense-bf16"])
def test_bf16_prefill_in_the_amx_range(name):
    """64 rows: past the fused kernels, inside every weight-only AMX GEMM's range on AMX CPUs (which then
    multiply x as one bf16 part, not two), the dequantize + GEMM path elsewhere: either way float32
    prefill stays float32-grade and bf16 prefill is bf16-grade."""
    w = _weight(name)
    x = torch.randn(64, K, generator=torch.Generator().manual_seed(4))
    ref = w.reference(x)
    assert _db(w(x) - ref, ref) < -75  # AMX's two bf16 parts: ~-80 dB and below
    w.prefill_dtype = torch.bfloat16
    assert -70 < _db(w(x) - ref, ref) < -40


def test_engine_sets_every_linear_and_still_matches_transformers(tiny_llama):
    from transformers import AutoModelForCausalLM

    llm = LLM(str(tiny_llama), prefill_dtype="bfloat16", kv_cache_memory_bytes=32 << 20, max_num_batched_tokens=128)
    m = llm.engine.model
    weights = [m.lm_head] + [w for layer in m.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    parts = [p for w in weights for p in getattr(w, "parts", [w])]
    assert parts and all(p.prefill_dtype == torch.bfloat16 for p in parts)

    ids = torch.randint(10, 1000, (100,), generator=torch.Generator().manual_seed(3)).tolist()
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0),
                       use_tqdm=False)[0]
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
    got = torch.tensor([out.prompt_logprobs[p][ids[p]].logprob for p in range(1, len(ids))])
    want = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert (got - want).abs().max() < 0.05  # bf16 GEMMs: close, not equal (float32 matches to 1e-3)


def test_bad_prefill_dtype_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="prefill_dtype='float16'.*auto, float32 or bfloat16"):
        LLM(str(tiny_llama), prefill_dtype="float16")


@pytest.mark.skipif(not extension.amx_available(), reason="the AMX GEMMs need a CPU with AMX")
@pytest.mark.parametrize("name", ["W4A16", "W4A16_ASYM", "W8A16"])
@pytest.mark.parametrize("m", [49, 64, 300])  # past every format's fused rows (48 at most): a prefill GEMM
def test_bf16_prefill_amx_wide_is_bf16_x_times_bf16_weight(name, m, monkeypatch):
    """Past 32 rows the AMX GEMM decodes each weight once a call and folds its group scale into the bf16 tile:
    the result is exactly bf16(x) · bf16(s · (q - zp)) summed in float32, for every row m and column n
    (N = 200 leaves a part unit of 32 rows, K = 320 a part chunk of 4 steps, g64 five groups, asymmetric
    zero points their own), and the float32 prefill stays two-part exact."""
    n, k = 200, 320
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(5)) * 0.05
    args = {"W4A16": QuantArgs(4, "int", True, "group", 64), "W4A16_ASYM": QuantArgs(4, "int", False, "group", 64),
            "W8A16": QuantArgs(8, "int", True, "channel")}[name]
    scale, zp = minmax_qparams(w, args, torch.bfloat16)
    q = quantize(w, scale, zp, args)
    weight = linear.make_weight(compress_linear(q, scale, zp, Scheme(name, args, None)), args, None)
    assert weight._amx_ok
    monkeypatch.setattr(weight, "amx_m", (1, 10**9))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    exact = x.double() @ weight.dequantize().double().T
    assert _db(weight(x) - exact, exact) < -75
    weight.prefill_dtype = torch.bfloat16
    bf16 = x.bfloat16().double() @ weight.dequantize().bfloat16().double().T
    assert _db(weight(x) - bf16, bf16) < -110  # float32 sums of the same bf16 products
