"""The Triton kernels (triton_linear.py, triton_attention.py) against the reference paths.

Without a GPU they run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, set here before triton
is first imported); with one, on CUDA tensors, compiled, so the same file checks the kernels on the GPU.
Every check uses fresh random inputs and small shapes, with N and K off the block sizes, and compares by
relative error ||y - ref|| / ||ref||: float32 math gives ~1e-7; float16 / bfloat16 outputs carry one rounding
of the output (2^-11, 2^-8: ~3e-4, ~3e-3; the interpreter truncates float32 to bf16 instead of rounding, which
doubles the latter), so 1e-5, 2e-3 and 1e-2. A wrong weight, group, scale or skipped tile costs far more.
Every buffer the kernels' modules allocate starts poisoned (NaN, or -77 for integers), so an element a kernel
fails to write shows up.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (the `test` extra pins it)", allow_module_level=True)
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated, on first import

from llmpress.checkpoint.compressed_tensors import decompress_linear  # noqa: E402
from llmpress.quant import QuantArgs, dynamic_per_token  # noqa: E402
from llmpress.engine import linear, ops, triton_attention, triton_linear  # noqa: E402

from test_kernels import make_checkpoint, weight_for  # noqa: E402  (tests/engine is on sys.path)
from triton_interp import fix_interpreter, poison  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = list(TOL)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(autouse=True)
def triton_mode(monkeypatch):
    """Every weight built in these tests runs the Triton kernels; every buffer they allocate is poisoned."""
    monkeypatch.setenv("LLMPRESS_KERNELS", "triton")
    if not CUDA:
        fix_interpreter(monkeypatch)
    poison(monkeypatch, triton_linear, triton_attention)


def build(fmt: str, n: int, k: int, group: int | None, sym: bool = True, seed: int = 0):
    tensors, scheme = make_checkpoint(fmt, n, k, group, sym, seed=seed)
    w = weight_for({name: t.to(DEVICE) for name, t in tensors.items()}, scheme)
    assert w._tri is not None and w.device.type == DEVICE and (w.out_features, w.in_features) == (n, k)
    return w, tensors, scheme


def check_linear(w: linear.QuantizedWeight, dtype: torch.dtype, ms=(1, 3, 17), seed: int = 1) -> float:
    """y = w(x) against w.reference(x) at each M, with K split as the launcher picks and forced to 3."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for m in ms:
        x = torch.randn(m, w.in_features, generator=g).to(DEVICE, dtype)
        ref = w.reference(x)  # float32
        for split_k in (None, 3):
            y = triton_linear.linear(x, w._tri, split_k=split_k)
            assert y.shape == (m, w.out_features) and y.dtype == dtype and not y.isnan().any()
            worst = max(worst, rel_err(y, ref))
        assert rel_err(w(x), ref) <= TOL[dtype]  # the container's call takes the same kernels
    assert worst <= TOL[dtype], worst
    return worst


# (N, K): N off the 64-wide tiles; K off the 128-deep decode tiles; 196 also ends inside a packed int4 word
INT4_CASES = [(72, 256, 32), (72, 256, 64), (96, 384, 128), (72, 196, None), (40, 1024, 128)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("n,k,group", INT4_CASES)
def test_int4(n, k, group, sym, dtype):
    w, _, _ = build("int4", n, k, group, sym)
    assert isinstance(w, linear.Int4Weight) and (w.group_size, w.groups) == ((group, k // group) if group else (k, 1))
    assert w._tri.qweight.shape == (-(-k // 8), n) and w.nbytes < n * k * 0.75  # still 4 bits a weight
    check_linear(w, dtype)


# (N, K, group, sym): groups of 128 and 256 and channel-wise, the groups "planes" tiles; N off the 64 / 128-wide
# tiles (136: a GEMV program past the end); K off the 128 / 256-deep tiles (384: one and a half GEMV tiles; 196
# ends inside a word). test_int4 runs the default ("gemv", reshape past one row)
# on the reshape route's groups of 32 and 64.
INT4_DECODE_CASES = [(72, 384, 128, True), (40, 512, 256, False), (136, 196, None, True), (136, 196, None, False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k,group,sym", INT4_DECODE_CASES)
@pytest.mark.parametrize("variant", triton_linear.INT4_DECODE_VARIANTS)
def test_int4_decode_variants(variant, n, k, group, sym, dtype, monkeypatch):
    """Each INT4_DECODE variant at decode sizes (M = 1, 3) matches the reference, K split as picked and forced."""
    monkeypatch.setattr(triton_linear, "INT4_DECODE", variant)
    w, _, _ = build("int4", n, k, group, sym)
    check_linear(w, dtype, ms=(1, 3))


@pytest.mark.parametrize("variant", triton_linear.INT4_DECODE_VARIANTS)
def test_int4_decode_routes(variant, monkeypatch):
    """The variant each decode batch takes: "gemv" at M = 1 (then "reshape"), "planes" where the K tile is >= 128
    deep (channel-wise, groups of 128 and 256), else "reshape"; prefill (M > 16) keeps its own route."""
    monkeypatch.setattr(triton_linear, "INT4_DECODE", variant)
    for group, tiled in [(None, "planes"), (128, "planes"), (256, "planes"), (64, "reshape"), (32, "reshape")]:
        w = build("int4", 40, 512, group)[0]._tri
        for m in (1, 3, 16):
            want = {"gemv": "gemv" if m == 1 else "reshape", "reshape": "reshape", "planes": tiled}[variant]
            assert triton_linear.int4_decode_route(m, w) == want, (group, m)
        assert triton_linear.int4_decode_route(17, w) is None


@pytest.mark.parametrize("variant", triton_linear.INT4_DECODE_VARIANTS)
def test_int4_decode_configs(variant, monkeypatch):
    """Other DECODE / GEMV tiles, as a benchmark sets them between calls, are read per call and stay exact:
    256-deep planes over groups of 256, 32 columns, 512-deep GEMV tiles with 64 columns (K 640: a partial tile)."""
    monkeypatch.setattr(triton_linear, "INT4_DECODE", variant)
    monkeypatch.setattr(triton_linear, "DECODE", triton_linear.GemmConfig(16, 32, 256, num_warps=2, num_stages=2))
    monkeypatch.setattr(triton_linear, "GEMV", triton_linear.GemmConfig(1, 64, 512, num_warps=8, num_stages=2))
    w, _, _ = build("int4", 40, 640, None, sym=False)
    check_linear(w, torch.float32, ms=(1, 2))
    w, _, _ = build("int4", 40, 768, 256)
    check_linear(w, torch.float32, ms=(1, 2))


def test_int4_decode_variant_is_checked(monkeypatch):
    """A misspelt INT4_DECODE is refused with the choices, not silently run as another variant."""
    monkeypatch.setattr(triton_linear, "INT4_DECODE", "plane")
    w, _, _ = build("int4", 40, 256, None)
    with pytest.raises(ValueError, match="INT4_DECODE is 'plane'.*gemv"):
        triton_linear.linear(torch.randn(1, 256).to(DEVICE), w._tri)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt,sym,group,cls", [
    ("int8", True, None, linear.Int8Weight), ("int8", False, 64, linear.Int8Weight),
    ("int8", False, None, linear.Int8Weight), ("w8a8", True, None, linear.W8A8Weight),
    ("w8a8", True, 64, linear.W8A8Weight), ("fp8", True, None, linear.FP8Weight),
    ("fp8w", True, None, linear.FP8Weight), ("fp8w", True, 32, linear.FP8Weight),
])
@pytest.mark.parametrize("n,k", [(88, 320), (96, 256)])  # on a GPU, M = 17: torch._int_mm; 96 x 256: _scaled_mm too
def test_byte_formats(fmt, sym, group, cls, n, k, dtype):
    w, _, _ = build(fmt, n, k, group, sym)
    assert type(w) is cls and w._tri.act == {"w8a8": "int8", "fp8": "fp8"}.get(fmt)
    check_linear(w, dtype)


@pytest.mark.parametrize("fmt", ["int4", "w8a8"])
def test_leading_dims_and_row_stride(fmt):
    """x [2, 3, K] -> [2, 3, N]; rows of a wider tensor (stride(0) > K, as slices of a fused output) are read
    in place and give the rows' own results."""
    w, _, _ = build(fmt, 64, 256, None)
    x = torch.randn(2, 3, 256).to(DEVICE)
    y = w(x)
    assert y.shape == (2, 3, 64)
    torch.testing.assert_close(y, w(x.reshape(6, 256)).reshape(2, 3, 64), rtol=0, atol=0)
    wide = torch.randn(5, 300).to(DEVICE)
    torch.testing.assert_close(w(wide[:, 20:276]), w(wide[:, 20:276].contiguous()), rtol=0, atol=0)


@pytest.mark.parametrize("fmt,sym,group", [("int4", True, 64), ("int4", False, 32), ("int4", False, None),
                                           ("int8", False, 64), ("w8a8", True, None), ("fp8w", True, 32)])
def test_dequantize_is_exact(fmt, sym, group):
    """The Triton layout dequantizes to compressed-tensors' (q - zp) * scale in float32, bit for bit,
    so w.reference (what the kernels are compared with above) is the checkpoint's own arithmetic."""
    w, tensors, scheme = build(fmt, 40, 192, group, sym)
    exact = decompress_linear({**tensors, "weight_scale": tensors["weight_scale"].float()}, scheme)
    torch.testing.assert_close(w.dequantize().cpu(), exact, rtol=0, atol=0)


@pytest.mark.parametrize("act", ["int8", "fp8"])
def test_activation_quantization_is_dynamic_per_token(act):
    """quantize_act's q * s is quant.dynamic_per_token bit for bit: exact ties at scale 1 (round half to
    even, for fp8 every rounding boundary between e4m3 values and their neighbours), an all-zero row, tails."""
    x = torch.randn(6, 1100) * torch.logspace(-3, 3, 6)[:, None]  # K past one 1024-wide block
    if act == "int8":
        ties = torch.tensor([127.0, 2.5, 3.5, -0.5, -1.5, 126.5, 0.49999997, -0.49999997])
    else:
        codes = torch.arange(256, dtype=torch.uint8)
        codes = codes[(codes & 0x7F) != 0x7F]  # no NaNs
        v = codes.view(torch.float8_e4m3fn).float().unique()
        mids = (v[1:] + v[:-1]) / 2
        ties = torch.cat([torch.tensor([448.0]), v, mids, mids.nextafter(mids + 1), mids.nextafter(mids - 1)])
    x[2, : ties.numel()] = ties
    x[2, ties.numel():] = x[2, ties.numel():].clamp(-126, 126)  # amax stays the tie row's: scale exactly 1
    x[3] = 0.0
    q, s = triton_linear.quantize_act(x.to(DEVICE), act)
    args = QuantArgs(8, "int" if act == "int8" else "float", True, "token", dynamic=True, observer=None)
    torch.testing.assert_close(q.float().cpu() * s.cpu()[:, None], dynamic_per_token(x, args), rtol=0, atol=0)


def test_group_size_the_kernels_cannot_tile_runs_the_reference():
    """Groups of 8 do not hold a 16-deep tl.dot tile: the weight keeps the CPU layout and the torch path."""
    tensors, scheme = make_checkpoint("int8", 40, 128, 8)
    w = weight_for(tensors, scheme)
    assert w._tri is None and w._ext is None
    x = torch.randn(3, 128)
    torch.testing.assert_close(w(x), w.reference(x))


def test_triton_mode_needs_triton(monkeypatch):
    """LLMPRESS_KERNELS=triton without triton installed is refused with the fix, not ignored."""
    monkeypatch.setattr(linear, "_triton_modules", lambda: None)
    with pytest.raises(ValueError, match="pip install triton"):
        linear.triton_wanted(torch.device("cpu"))
    monkeypatch.setenv("LLMPRESS_KERNELS", "reference")
    assert linear.triton_wanted(torch.device(DEVICE)) is None


# ------------------------------------------------------------------------------------- attention
def paged(lens, heads, kv_heads, dim, block_size, dtype, seed=0, spare_blocks=2):
    """Random q and caches; each sequence's blocks scattered over the pool, tables padded with junk ids."""
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(1, -(-max(lens) // block_size)) + spare_blocks
    num_blocks = len(lens) * max_blocks + 3
    k = torch.randn(num_blocks, block_size, kv_heads, dim, generator=g).to(dtype)
    v = torch.randn(num_blocks, block_size, kv_heads, dim, generator=g).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[: len(lens) * max_blocks].view(len(lens), max_blocks)
    q = torch.randn(len(lens), heads, dim, generator=g).to(dtype)
    return [t.to(DEVICE) for t in (q, k, v, tables.to(torch.int32), torch.tensor(lens, dtype=torch.int32))]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lens,heads,kv_heads,dim,block_size", [
    ([37, 1, 100, 64], 8, 2, 64, 16),  # GQA 4, ragged, lengths off the block size
    ([1], 4, 4, 32, 16),               # one sequence of one token, MHA
    ([77, 0, 130], 6, 2, 48, 10),      # an empty context, a block size that is not a power of two, D = 48
    ([300, 5], 16, 1, 128, 32),        # MQA over a long context
])
@pytest.mark.parametrize("splits", [None, 1, 3])
def test_decode_attention(lens, heads, kv_heads, dim, block_size, dtype, splits):
    q, k, v, tables, ctx = paged(lens, heads, kv_heads, dim, block_size, dtype)
    scale = dim ** -0.5
    out = triton_attention.decode_attention(q, k, v, tables, ctx, scale, num_splits=splits)
    ref = ops.decode_attention_reference(q.float(), k.float(), v.float(), tables, ctx, scale)
    assert out.shape == q.shape and out.dtype == dtype and not out.isnan().any()
    assert rel_err(out, ref) <= TOL[dtype], rel_err(out, ref)
    assert (out[ctx == 0] == 0).all()


def test_ops_dispatch_to_triton():
    """ops.decode_attention takes the Triton kernel under LLMPRESS_KERNELS=triton (on CUDA: always); bf16 too."""
    q, k, v, tables, ctx = paged([20, 9], 4, 2, 32, 16, torch.bfloat16)
    out = ops.decode_attention(q, k, v, tables, ctx, 0.2)
    assert out.dtype == torch.bfloat16
    ref = ops.decode_attention_reference(q.float(), k.float(), v.float(), tables, ctx, 0.2)
    assert rel_err(out, ref) <= TOL[torch.bfloat16]


# ------------------------------------------------------------------------------------- a tiny Llama
@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory, tiny_llama, calib_file):
    from llmpress.compress import Recipe, compress

    root = tmp_path_factory.mktemp("triton-ckpt")
    out = {}
    for scheme, group in [("W4A16", 32), ("W4A16_ASYM", 64), ("W8A16", None), ("W8A8", None), ("FP8_DYNAMIC", None)]:
        recipe = Recipe(scheme=scheme, group_size=group, num_samples=4, max_seq_len=32, dataset=str(calib_file),
                        observer="minmax", dtype="float32")
        out[scheme] = compress(tiny_llama, recipe, root / scheme, progress=False)
    return out


@pytest.mark.parametrize("scheme", ["W4A16", "W4A16_ASYM", "W8A16", "W8A8", "FP8_DYNAMIC"])
def test_tiny_llama_linears(scheme, tiny_checkpoints, monkeypatch):
    """Every Linear of a compressed tiny Llama, built by make_weight from the checkpoint's own tensors and
    quantization_config as the loader builds them: the Triton weight equals the reference path's."""
    import json

    from safetensors.torch import load_file

    from llmpress.engine.loader import quantization_config

    folder = tiny_checkpoints[scheme]
    qc = quantization_config(json.loads((folder / "config.json").read_text())["quantization_config"])
    tensors = {}
    for f in folder.glob("*.safetensors"):
        tensors.update(load_file(f))
    modules = sorted({name.rsplit(".", 1)[0] for name in tensors if name.endswith(".weight_scale")})
    assert len(modules) == 2 * 7  # q k v o gate up down in each of the 2 layers
    worst = 0.0
    for i, module in enumerate(modules):
        group = qc.group_for(module)
        own = {name[len(module) + 1:]: t for name, t in tensors.items() if name.startswith(module + ".")}

        def make(mode: str, device: str) -> linear.QuantizedWeight:
            monkeypatch.setenv("LLMPRESS_KERNELS", mode)
            return linear.make_weight({n: t.to(device) for n, t in own.items()}, group.weights,
                                       group.input_activations)

        tri, ref = make("triton", DEVICE), make("reference", "cpu")
        assert tri._tri is not None and ref._tri is None and type(tri) is type(ref)
        x = torch.randn(1 + 8 * (i % 3), tri.in_features, generator=torch.Generator().manual_seed(i))
        worst = max(worst, rel_err(tri(x.to(DEVICE)).cpu(), ref(x)))
    assert worst <= TOL[torch.float32], worst
