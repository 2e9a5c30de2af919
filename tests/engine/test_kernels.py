"""The quantized CPU kernels against the project's own compressed-tensors reader.

Every container is checked on random weights written by the project's writer (`quantize` +
`compress_linear`, i.e. `pack_int`) against "truth": the checkpoint decompressed by
`decompress_linear` with float32 scales, times x, in float64. Runs the same in both modes:
with the extension, `w(x)` takes the fused kernel (small M) or dequantize + sgemm (large M),
and both are forced at every M as well; with LLMPRESS_KERNELS=reference it takes the torch path.

Tolerance is SQNR (signal-to-error power, dB) against the float64 truth. Every path computes in
float32 with exact dequantized weights, so the error is summation rounding, ~sqrt(K) * 2^-24
relative (about 110 dB at K = 1536). The int4 kernel folds the zero point into a per-group
sum of x, cancelling terms up to 16x the result (-24 dB), so we ask >= 80 dB of every path:
a single wrong weight, group scale or rounding of an activation costs far more than that.
"""
from __future__ import annotations

import math

import pytest
import torch

from llmpress.checkpoint.compressed_tensors import compress_linear, decompress_linear, pack_int, unpack_int
from llmpress.compress.observers import minmax_qparams
from llmpress.quant import QuantArgs, Scheme, dynamic_per_token, get_scheme, quantize
from llmpress.engine import extension, kernel_layout, linear

MIN_SQNR_DB = 80.0
MS = (1, 3, 16, 40, 300)
FAST = extension.available()  # False under LLMPRESS_KERNELS=reference
AMX = extension.amx_available()  # CPUs with AMX (Sapphire Rapids on): the AMX GEMMs are tested too
# The float-decoded GEMMs have 256-bit (AVX2) and, in AVX-512 builds, 512-bit tiles: test each.
WIDTHS = [b for b in (256, 512) if b <= extension.max_vector_bits()] if FAST else [0]


@pytest.fixture(params=WIDTHS, ids=lambda b: f"{b}bit" if b else "reference")
def width(request):
    """Runs the test at one vector width, then restores the widest."""
    if request.param:
        extension.set_vector_bits(request.param)
    yield request.param
    if request.param:
        extension.set_vector_bits(WIDTHS[-1])


def sqnr_db(y: torch.Tensor, truth: torch.Tensor) -> float:
    err = (y.double() - truth.double()).pow(2).sum().item()
    return math.inf if err == 0 else 10 * math.log10(truth.double().pow(2).sum().item() / err)


def _args(fmt: str, group: int | None, sym: bool) -> tuple[QuantArgs, QuantArgs | None]:
    strategy = "group" if group else "channel"
    if fmt == "int4":
        return QuantArgs(4, "int", sym, strategy, group), None
    if fmt in ("int8", "w8a8"):
        act = QuantArgs(8, "int", True, "token", dynamic=True, observer=None) if fmt == "w8a8" else None
        return QuantArgs(8, "int", sym, strategy, group), act
    act = QuantArgs(8, "float", True, "token", dynamic=True, observer=None) if fmt == "fp8" else None
    return QuantArgs(8, "float", True, strategy, group), act  # "fp8" dynamic, "fp8w" weight-only


def make_checkpoint(fmt: str, n: int, k: int, group: int | None, sym: bool = True, seed: int = 0, scale_dtype=torch.bfloat16):
    """Random weights with a few outlier columns, quantized and written as the project writes them."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, torch.randint(0, k, (3,), generator=g)] *= 8
    args, act = _args(fmt, group, sym)
    scheme = Scheme("test", args, act)
    scale, zp = minmax_qparams(w, args, scale_dtype)
    tensors = compress_linear(quantize(w, scale, zp, args), scale, zp, scheme)
    return tensors, scheme


def truth(x: torch.Tensor, tensors: dict, scheme: Scheme) -> torch.Tensor:
    w = decompress_linear({**tensors, "weight_scale": tensors["weight_scale"].float()}, scheme)  # float32, exact
    if scheme.input_activations is not None:
        x = dynamic_per_token(x, scheme.input_activations)
    return x.double() @ w.double().T


def weight_for(tensors: dict, scheme: Scheme) -> linear.QuantizedWeight:
    return linear.make_weight(tensors, scheme.weights, scheme.input_activations)


def check_all_paths(w: linear.QuantizedWeight, tensors: dict, scheme: Scheme, monkeypatch, ms=MS, seed=1):
    assert (w._ext is not None) == FAST  # the mode under test is the one the weight runs
    g = torch.Generator().manual_seed(seed)
    for m in ms:
        x = torch.randn(m, w.in_features, generator=g)
        ref = truth(x, tensors, scheme)
        paths = {"call": w, "reference": w.reference}
        for name, fn in paths.items():
            assert sqnr_db(fn(x), ref) >= MIN_SQNR_DB, (name, m)
        if FAST:  # force each fast path at every M
            for name, limit in (("fused", 10**9), ("prefill", 0)):
                monkeypatch.setattr(w, "small_m_max", limit)
                monkeypatch.setattr(w, "_amx_ok", False)
                y = w(x)
                assert y.shape == (m, w.out_features) and y.dtype == torch.float32
                assert sqnr_db(y, ref) >= MIN_SQNR_DB, (name, m, sqnr_db(y, ref))
            monkeypatch.undo()
        if w._amx_ok:  # the AMX GEMM at every M too (16-row tiles: 40 and 300 take several)
            monkeypatch.setattr(w, "amx_m", (1, 10**9))
            y = w(x)
            assert y.shape == (m, w.out_features) and y.dtype == torch.float32
            assert sqnr_db(y, ref) >= MIN_SQNR_DB, ("amx", m, sqnr_db(y, ref))
            monkeypatch.undo()


# (N, K, group sizes that divide K): SmolLM2's shapes and odd ones that exercise every tail and padding.
SHAPES = [
    (192, 576, (32, 64, None)),
    (1536, 576, (64, None)),
    (576, 1536, (32, 64, 128, 256, None)),
    (67, 160, (32, None)),  # K padded to 192: a half-filled last step; odd N
    (67, 200, (None,)),     # K % 64 = 8
    (33, 100, (None,)),     # K % 8 = 4: a partial packed int4 word
    (24, 2176, (64, 128, None)),  # x rows of 8.5 KiB: the 512-bit tiles take 2 rows, not 8 (L1)
    (40, 2100, (None,)),    # ... with a padded last step
]
CASES = [(n, k, gs) for n, k, groups in SHAPES for gs in groups]


# The int4 GEMM's activations at 512 bits: int16 (csrc/int4_vnni.cpp, where built; groups of 64j) or float32.
# int16 rounds x per weight group to 1/65534 of the group's largest |x|: ~90 dB on these Gaussian rows, inside
# MIN_SQNR_DB; a wrong lane order, block scale or offset costs far more.
INT4_ACTS = [16, 32] if FAST and extension.int4_int16_built() else [32]


@pytest.fixture(params=INT4_ACTS, ids=lambda b: f"act{b}")
def int4_act(request, width):
    """Runs the test with the int4 activations of `request.param` bits, then restores the default (16 where
    built). int16 runs only in 512-bit tiles: at 256 bits its case is the float32 one, so it is skipped."""
    if request.param == 16 and width != 512:
        pytest.skip("the int16 int4 GEMM runs with the 512-bit tiles only")
    if FAST:
        extension.set_int4_act_bits(request.param)
    yield request.param
    if FAST:
        extension.set_int4_act_bits(INT4_ACTS[0])


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("n,k,group", CASES)
def test_int4(n, k, group, sym, monkeypatch, width, int4_act):
    tensors, scheme = make_checkpoint("int4", n, k, group, sym)
    w = weight_for(tensors, scheme)
    assert isinstance(w, linear.Int4Weight) and (w.out_features, w.in_features) == (n, k)
    assert w._amx_ok == (AMX and w.group_size % 64 == 0)
    check_all_paths(w, tensors, scheme, monkeypatch)


@pytest.mark.skipif(not (FAST and extension.int4_int16_built()), reason="the int16 int4 GEMM is not built here")
@pytest.mark.parametrize("group", [128, None])
def test_int4_int16_rounds_x_per_block(group):
    """The int16 path really rounds x (below the float32 kernel's > 100 dB), each block of 128 k on its own
    scale: with one channel 10^4 x the rest, one scale per row would leave ~66 dB; per block stays > 75."""
    tensors, scheme = make_checkpoint("int4", 96, 4096, group)
    w = weight_for(tensors, scheme)
    x = torch.randn(4, 4096, generator=torch.Generator().manual_seed(3))
    ref = truth(x, tensors, scheme)
    y16 = w._fused(x)
    extension.set_int4_act_bits(32)
    try:
        y32 = w._fused(x)
    finally:
        extension.set_int4_act_bits(16)
    assert sqnr_db(y32, ref) > 100
    assert MIN_SQNR_DB < sqnr_db(y16, ref) < 100
    x[:, 7] *= 1e4
    ref = truth(x, tensors, scheme)
    s = x.abs().amax(1, keepdim=True) / 32767  # one int16 scale per row, for contrast
    assert sqnr_db(truth((x / s).round() * s, tensors, scheme), ref) < 70
    assert sqnr_db(w._fused(x), ref) > 75


@pytest.mark.skipif(not (FAST and extension.int4_int16_built()), reason="the int16 int4 GEMM is not built here")
def test_int4_int16_largest_sums_fit_int32():
    """Every nibble 15 (w = +7 s) against x = its block's max: each block's integer sum is the most it
    can hold (128 · 15 · 32767), and a channel-wise row sums 64 blocks; nothing may wrap."""
    n, k = 8, 8192
    packed = pack_int(torch.full((n, k), 7, dtype=torch.int8), 4)
    tensors = {"weight_packed": packed, "weight_scale": torch.full((n, 1), 0.5), "weight_shape": torch.tensor([n, k])}
    scheme = Scheme("test", QuantArgs(4, "int", True, "channel", None), None)
    w = weight_for(tensors, scheme)
    x = torch.full((2, k), 3.0)
    torch.testing.assert_close(w._fused(x), torch.full((2, n), 3.0 * 7 * 0.5 * k), rtol=1e-6, atol=0)


@pytest.mark.parametrize("fmt,sym", [("int8", True), ("int8", False), ("w8a8", True), ("fp8", True), ("fp8w", True)])
@pytest.mark.parametrize("n,k,group", CASES)
def test_byte_formats(fmt, sym, n, k, group, monkeypatch, width):
    tensors, scheme = make_checkpoint(fmt, n, k, group, sym)
    w = weight_for(tensors, scheme)
    expected = {"int8": linear.Int8Weight, "w8a8": linear.W8A8Weight, "fp8": linear.FP8Weight, "fp8w": linear.FP8Weight}
    assert type(w) is expected[fmt]
    if fmt.startswith("fp8"):
        assert w.dynamic_act == (fmt == "fp8")
    assert w._amx_ok == (AMX and w.group_size % 64 == 0 and w.zero_point is None)
    check_all_paths(w, tensors, scheme, monkeypatch)


@pytest.mark.parametrize("n,k", [(192, 576), (67, 200), (33, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense(n, k, dtype, monkeypatch, width):
    w32 = torch.randn(n, k)
    w = linear.DenseWeight(w32.to(dtype))
    assert w.nbytes == n * k * dtype.itemsize + (n * (-k % 64) * 2 if dtype == torch.bfloat16 else 0)
    g = torch.Generator().manual_seed(0)
    for m in MS:
        x = torch.randn(m, k, generator=g)
        ref = x.double() @ w32.to(dtype).double().T
        assert sqnr_db(w(x), ref) >= MIN_SQNR_DB
        assert sqnr_db(w.reference(x), ref) >= MIN_SQNR_DB
        if FAST and dtype == torch.bfloat16:
            assert w._amx_ok == AMX
            for limit in (10**9, 0):
                monkeypatch.setattr(w, "small_m_max", limit)
                monkeypatch.setattr(w, "_amx_ok", False)
                assert sqnr_db(w(x), ref) >= MIN_SQNR_DB
            monkeypatch.undo()
            if AMX:
                monkeypatch.setattr(w, "amx_m", (1, 10**9))
                assert sqnr_db(w(x), ref) >= MIN_SQNR_DB, ("amx", m)
                monkeypatch.undo()


@pytest.mark.parametrize("fmt,sym,group", [("int4", True, 64), ("int4", False, 32), ("int4", True, None),
                                           ("int8", True, None), ("int8", False, 64), ("w8a8", True, None),
                                           ("fp8", True, None), ("fp8w", True, 32)])
@pytest.mark.parametrize("reference", [False, True], ids=["auto", "reference"])
def test_dequantize_is_exact(fmt, sym, group, reference, monkeypatch):
    """dequantize() is decompress_linear computed in float32, bit for bit (on either path); rounded
    to bf16 it is decompress_linear of the bf16-scaled checkpoint, bit for bit (the float32 product
    of a small integer and a bf16 scale is exact, so rounding once to bf16 is the same)."""
    if reference:
        monkeypatch.setenv("LLMPRESS_KERNELS", "reference")
    tensors, scheme = make_checkpoint(fmt, 136, 320, group, sym)
    w = weight_for(tensors, scheme)
    dq = w.dequantize()
    assert dq.dtype == torch.float32 and dq.shape == (136, 320)
    exact = decompress_linear({**tensors, "weight_scale": tensors["weight_scale"].float()}, scheme)
    torch.testing.assert_close(dq, exact, rtol=0, atol=0)
    torch.testing.assert_close(dq.to(torch.bfloat16), decompress_linear(tensors, scheme), rtol=0, atol=0)


@pytest.mark.parametrize("group", [64, 128, None])
def test_int4_stays_4_bit(group):
    tensors, scheme = make_checkpoint("int4", 576, 1536, group, sym=False)
    w = weight_for(tensors, scheme)
    dense_bf16 = 576 * 1536 * 2
    assert w.nbytes <= 0.35 * dense_bf16, w.nbytes / dense_bf16
    assert w.qweight.nbytes == 576 * 1536 // 2  # 4 bits a weight, K already a multiple of 64


def test_int4_blocked_layout():
    """Nibble t of word j in block b holds k = 64b + 8t + j (what one 256-bit load + mask reads)."""
    q = torch.randint(-8, 8, (5, 200), dtype=torch.int8)
    blocked = kernel_layout.block_int4(pack_int(q, 4), 200)
    assert blocked.shape == (5, 256 // 8)
    b, t, j = 2, 5, 3
    word = int(blocked[4, b * 8 + j]) & 0xFFFFFFFF
    assert (word >> (4 * t)) & 15 == int(q[4, 64 * b + 8 * t + j]) + 8
    torch.testing.assert_close(kernel_layout.unblock_int4(blocked, 200), unpack_int(pack_int(q, 4), 4, 200), rtol=0, atol=0)


def test_fp8_every_code(width):
    """All 254 finite e4m3fn codes, subnormals and both zeros included, decode exactly."""
    codes = torch.arange(256, dtype=torch.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0  # the two NaNs
    q = codes.repeat(3, 1).view(torch.float8_e4m3fn)  # [3, 256]
    scale = torch.tensor([[1.0], [0.5], [2.0**-10]])
    w = linear.FP8Weight(q, scale, dynamic_act=False)
    exact = q.float() * scale
    torch.testing.assert_close(w.dequantize(), exact, rtol=0, atol=0)
    x = torch.zeros(1, 256)
    for i in range(0, 256, 37):  # one-hot rows pick single weights out through the GEMM
        x.zero_()
        x[0, i] = 1.0
        torch.testing.assert_close(w(x), exact[:, i][None], rtol=0, atol=0)


def test_w8a8_activation_quantization_matches_torch():
    """The C++ per-token int8 quantizer is quant.dynamic_per_token, bit for bit (round half even)."""
    assert extension.build(), "the extension must build on this machine"
    x = torch.randn(7, 333) * torch.logspace(-3, 3, 7)[:, None]
    x[2, :6] = torch.tensor([127.0, 2.5, 3.5, -0.5, -1.5, 126.5])  # amax 127: scale 1, exact ties
    x[2, 6:] = x[2, 6:].clamp(-100, 100)
    x[3] = 0.0  # an all-zero row: the scale clamps at 1e-12
    q, s = extension.load().quantize_act_int8(x)
    args = QuantArgs(8, "int", True, "token", dynamic=True, observer=None)
    torch.testing.assert_close(q.float() * s[:, None], dynamic_per_token(x, args), rtol=0, atol=0)


def test_leading_dims_and_dtype():
    tensors, scheme = make_checkpoint("int4", 64, 128, 32)
    w = weight_for(tensors, scheme)
    x = torch.randn(2, 3, 128)
    y = w(x)
    assert y.shape == (2, 3, 64)
    torch.testing.assert_close(y, w(x.reshape(6, 128)).reshape(2, 3, 64))
    assert w(x.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("group", [16, 96])
def test_group_size_the_kernels_cannot_tile_still_runs(group):
    """Groups that do not tile the kernels' 64-value steps (not 32, not a multiple of 64): the
    weight says so and runs in torch."""
    tensors, scheme = make_checkpoint("int4", 40, 192, group)
    w = weight_for(tensors, scheme)
    assert w._ext is None  # the reference path, whatever the mode
    x = torch.randn(3, 192)
    assert sqnr_db(w(x), truth(x, tensors, scheme)) >= MIN_SQNR_DB


# ------------------------------------------------------------------------------------- make_weight
@pytest.mark.parametrize("name,cls", [("W4A16", linear.Int4Weight), ("W4A16_ASYM", linear.Int4Weight),
                                      ("W8A16", linear.Int8Weight), ("W8A8", linear.W8A8Weight),
                                      ("FP8_DYNAMIC", linear.FP8Weight)])
def test_make_weight_picks_the_scheme(name, cls):
    s = get_scheme(name).with_group_size(64)
    tensors, _ = make_checkpoint({"W4A16": "int4", "W4A16_ASYM": "int4", "W8A16": "int8", "W8A8": "w8a8",
                                  "FP8_DYNAMIC": "fp8"}[name], 32, 128, s.weights.group_size, s.weights.symmetric)
    assert type(linear.make_weight(tensors, s.weights, s.input_activations)) is cls


def _unsupported():
    t4, s4 = make_checkpoint("int4", 32, 128, 64)
    t8, s8 = make_checkpoint("int8", 32, 128, None)
    w4, w8 = s4.weights.to_ct(), s8.weights.to_ct()
    int8_token = QuantArgs(8, "int", True, "token", dynamic=True, observer=None).to_ct()
    return [
        ("activation-order", {**t4, "weight_g_idx": torch.zeros(128, dtype=torch.int32)}, {**w4, "actorder": "group"}, None),
        ("activation-order", t4, {**w4, "actorder": "group"}, None),
        ("num_bits=2", t4, {**w4, "num_bits": 2}, None),
        ("num_bits=16", t8, {**w8, "num_bits": 16}, None),
        ("static activation", t8, w8, {**int8_token, "dynamic": False, "strategy": "tensor"}),
        ("symmetric per token", t8, w8, {**int8_token, "strategy": "tensor"}),
        ("W4A8", t4, w4, int8_token),
        ("strategy 'block'", t8, {**w8, "strategy": "block"}, None),
        ("W8A8 int8/int8 or FP8", t8, w8, QuantArgs(8, "float", True, "token", dynamic=True).to_ct()),
    ]


@pytest.mark.parametrize("case", range(9))
def test_make_weight_rejects_unsupported(case):
    match, tensors, wargs, aargs = _unsupported()[case]
    with pytest.raises(ValueError, match=match):
        # the args as a checkpoint's JSON states them, read back the way the loader reads them
        linear.make_weight(tensors, QuantArgs.from_ct(wargs), QuantArgs.from_ct(aargs) if aargs else None)


# ------------------------------------------------------------------------------------- attention
@pytest.mark.skipif(not AMX, reason="needs a CPU with AMX")
@pytest.mark.parametrize("m", [1, 7, 16, 33])
def test_amx_w8a8_sums_are_exact(m):
    """AMX W8A8 sums q_a · q_w in int32 (TDPBSSD), exactly: against int64 sums scaled in float64 the
    only error is the last float32 roundings (~1e-7), where a dropped or misplaced k would cost ~1e-2."""
    tensors, scheme = make_checkpoint("w8a8", 576, 1536, None)
    w = weight_for(tensors, scheme)
    x = torch.randn(m, 1536, generator=torch.Generator().manual_seed(m))
    q, s = w._ext.quantize_act_int8(x)
    exact = (q.long() @ w.qweight.long().T).double() * s.double()[:, None] * w.scale.double().T
    y = w._ext.amx_w8a8_gemm(x, w.qweight, w.scale, w.group_size).double()
    assert ((y - exact).abs().max() / exact.abs().max()).item() < 1e-6


def test_amx_can_be_switched_off(monkeypatch):
    """LLMPRESS_AMX=0, read when a weight is built, keeps it on the register-tile GEMMs."""
    tensors, scheme = make_checkpoint("int4", 192, 576, 64)
    monkeypatch.setenv("LLMPRESS_AMX", "0")
    assert not extension.amx_available() and not weight_for(tensors, scheme)._amx_ok
    monkeypatch.delenv("LLMPRESS_AMX")
    assert weight_for(tensors, scheme)._amx_ok == AMX


@pytest.mark.skipif(not FAST, reason="the extension is not built here")
@pytest.mark.parametrize("fmt,cls", [("int4", linear.Int4Weight), ("int8", linear.Int8Weight), ("w8a8", linear.W8A8Weight),
                                     ("fp8", linear.FP8Weight)])
def test_fused_rows_follow_the_vector_width(fmt, cls, width):
    """The 512-bit tiles beat dequantize + sgemm up to more rows than the AVX2 ones: a weight takes
    the crossover of the width set when it binds, and the call at the crossover's edge takes each path."""
    tensors, scheme = make_checkpoint(fmt, 64, 128, None)
    w = weight_for(tensors, scheme)
    assert isinstance(w, cls)
    assert w.small_m_max == (cls.small_m_max_wide if width == 512 else cls.small_m_max)
    x = torch.randn(w.small_m_max + 1, 128)
    ref = truth(x, tensors, scheme)
    for m in (w.small_m_max, w.small_m_max + 1):  # fused, then prefill
        assert sqnr_db(w(x[:m]), ref[:m]) >= MIN_SQNR_DB
