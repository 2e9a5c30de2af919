"""The per-layer Triton kernels (triton_ops.py) against ops.py's torch references.

Without a GPU they run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, set here before triton is
first imported); with one, on CUDA tensors, compiled. Inputs are fresh random tensors of small, odd shapes.
The kernels round to bf16 / fp16 where the references do, so beyond float32's differences (rsqrt, exp, sums,
~1e-7) their outputs are the references' bits: float32 is compared at 1e-6 relative, and bf16 / fp16 outputs
must match bit for bit but for a few values (MOSTLY_EXACT) that float32 differences move across a rounding
boundary, which then differ by one unit in the last place. Triton 3.6's interpreter truncates float32 to
bfloat16 where the GPU rounds to nearest even, so the fixture makes it round as the GPU does.
Every buffer triton_ops allocates starts poisoned (NaN), so an element a kernel fails to write shows up.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (the `test` extra pins it)", allow_module_level=True)
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated, on first import

import numpy as np  # noqa: E402

from llmpress.engine import ops, triton_ops  # noqa: E402
from triton_interp import fix_interpreter, poison  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MOSTLY_EXACT = 0.97  # bf16 / fp16: the share of output elements that must equal the reference's bits


@pytest.fixture(autouse=True)
def triton_mode(monkeypatch):
    """ops.py sends every op here; triton_ops' allocations are poisoned; the interpreter rounds like the GPU."""
    monkeypatch.setenv("LLMPRESS_KERNELS", "triton")
    if not CUDA:
        import triton.language as tl
        import triton.runtime.interpreter as interp

        fix_interpreter(monkeypatch)

        # float32 -> bfloat16 truncates in the interpreter; the GPU (and torch) round to nearest even
        cast = interp.InterpreterBuilder.cast_impl

        def cast_rne(self, src, dst_type):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                bits = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16).view(torch.int16)
                return interp.TensorHandle(bits.numpy().view(np.uint16), tl.bfloat16)
            return cast(self, src, dst_type)

        monkeypatch.setattr(interp.InterpreterBuilder, "cast_impl", cast_rne)
    poison(monkeypatch, triton_ops)


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def assert_matches(y: torch.Tensor, ref: torch.Tensor) -> None:
    """float32: within 1e-6 of the reference (relative, in norm); bf16 / fp16: its bits for all but a few
    elements, and those within two units in the last place (a rounding flipped before a product)."""
    assert y.shape == ref.shape and y.dtype == ref.dtype, (y.shape, y.dtype, ref.shape, ref.dtype)
    assert not y.isnan().any()
    if y.dtype == torch.float32:
        err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
        assert err <= 1e-6, err
        return
    if y.is_cuda:  # compiled, multiply-adds are fused (one rounding where the reference has two): measured on an
        # H200, 72% of bf16 rope outputs kept the reference's bits; compare as the GEMM tests do, in norm
        err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
        assert err <= {torch.bfloat16: 1e-2, torch.float16: 2e-3}[y.dtype], err
        return
    exact = (y == ref).float().mean().item()
    assert exact >= MOSTLY_EXACT, exact
    ulp = 2 * torch.finfo(y.dtype).eps * ref.float().abs().clamp_min(torch.finfo(y.dtype).tiny)
    assert ((y.float() - ref.float()).abs() <= ulp).all()


# ------------------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (5, 200), (3, 1000)])
def test_rms_norm(rows, hidden, dtype):
    x, w = randn(rows, hidden, dtype=dtype, seed=1), randn(hidden, dtype=dtype, seed=2, scale=0.1) + 1
    assert_matches(ops.rms_norm(x, w, 1e-5), ops.rms_norm_reference(x, w, 1e-5))


def test_rms_norm_promotes_like_torch():
    """bf16 activations with a float32 weight: the reference's result is float32, and so is the kernel's."""
    x, w = randn(4, 96, dtype=torch.bfloat16, seed=3), randn(96, seed=4)
    assert_matches(ops.rms_norm(x, w, 1e-6), ops.rms_norm_reference(x, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (7, 328)])
def test_add_rms_norm_(rows, hidden, dtype):
    x, delta = randn(rows, hidden, dtype=dtype, seed=5), randn(rows, hidden, dtype=dtype, seed=6)
    w = randn(hidden, dtype=dtype, seed=7, scale=0.1) + 1
    x_ref = x.clone()
    y = ops.add_rms_norm_(x, delta, w, 1e-5)
    x_ref.add_(delta)
    assert torch.equal(x, x_ref)  # the residual add rounds once, as torch's add_ does: the same bits
    assert_matches(y, ops.rms_norm_reference(x_ref, w, 1e-5))


def test_non_contiguous_rows_take_the_reference():
    x, w = randn(6, 128, seed=8), randn(64, seed=9)
    view = x[:, ::2]  # not contiguous: the kernel would read the wrong elements
    torch.testing.assert_close(ops.rms_norm(view, w, 1e-5), ops.rms_norm_reference(view, w, 1e-5))


# ------------------------------------------------------------------------------------- rotary + cache
def rope_inputs(tokens, heads, kv_heads, dim, num_blocks, block_size, dtype, cache_dtype, seed):
    qkv = randn(tokens, (heads + 2 * kv_heads) * dim, dtype=dtype, seed=seed)
    ang = torch.rand(tokens, dim // 2, generator=torch.Generator().manual_seed(seed + 1)) * 6.3
    cos, sin = ang.cos().to(dtype).to(DEVICE), ang.sin().to(dtype).to(DEVICE)
    k_cache = randn(num_blocks, block_size, kv_heads, dim, dtype=cache_dtype, seed=seed + 2)
    v_cache = randn(num_blocks, block_size, kv_heads, dim, dtype=cache_dtype, seed=seed + 3)
    g = torch.Generator().manual_seed(seed + 4)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens].to(DEVICE)  # scattered over blocks
    return qkv, cos, sin, k_cache, v_cache, slots


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,heads,kv_heads,dim,num_blocks,block_size", [
    (1, 4, 4, 32, 3, 16),    # one decode token, MHA
    (5, 8, 2, 64, 4, 16),    # GQA 4
    (9, 6, 1, 48, 5, 10),    # MQA, D / 2 = 24 off a power of two, a block size that is not one
])
def test_rope_qkv_cache_(tokens, heads, kv_heads, dim, num_blocks, block_size, dtype):
    qkv, cos, sin, k_cache, v_cache, slots = rope_inputs(
        tokens, heads, kv_heads, dim, num_blocks, block_size, dtype, dtype, seed=tokens)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    k_before = k_cache.clone()
    q = ops.rope_qkv_cache_(qkv, cos, sin, k_cache, v_cache, slots, heads, kv_heads)
    q_ref = ops.rope_qkv_cache_reference(qkv, cos, sin, k_ref, v_ref, slots, heads, kv_heads)
    assert_matches(q, q_ref.contiguous())
    flat = k_cache.view(-1, kv_heads, dim)
    assert_matches(flat[slots], k_ref.view(-1, kv_heads, dim)[slots])
    assert torch.equal(v_cache, v_ref)  # a copy: every bit, and nothing but the slots' rows written
    untouched = torch.ones(flat.shape[0], dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    assert torch.equal(flat[untouched], k_before.view(-1, kv_heads, dim)[untouched])


@pytest.mark.parametrize("dtype,cache_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_rope_qkv_cache_dtypes(dtype, cache_dtype, monkeypatch):
    """A cache of another dtype than the activations, slots as int32: converted as the reference converts."""
    qkv, cos, sin, k_cache, v_cache, slots = rope_inputs(3, 4, 2, 32, 2, 8, dtype, cache_dtype, seed=11)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    calls = []
    monkeypatch.setattr(triton_ops, "rope_qkv_cache_", _spy(triton_ops.rope_qkv_cache_, calls))
    q = ops.rope_qkv_cache_(qkv, cos, sin, k_cache, v_cache, slots.to(torch.int32), 4, 2)
    q_ref = ops.rope_qkv_cache_reference(qkv, cos, sin, k_ref, v_ref, slots, 4, 2)
    assert calls, "ops.rope_qkv_cache_ did not take the Triton kernel"
    assert_matches(q, q_ref.contiguous())
    assert_matches(k_cache.flatten(0, 1)[slots], k_ref.flatten(0, 1)[slots])
    assert torch.equal(v_cache, v_ref)


# ------------------------------------------------------------------------------------- SwiGLU
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,inter", [(1, 48), (6, 1500)])  # 1500: two column blocks, the second ragged
def test_silu_mul(rows, inter, dtype):
    gate_up = randn(rows, 2 * inter, dtype=dtype, seed=rows, scale=3.0)  # silu's tails: exp(-x) over- and underflows
    assert_matches(ops.silu_mul(gate_up), ops.silu_mul_reference(gate_up))


def _spy(fn, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(fn.__name__)
        return fn(*args, **kwargs)
    return wrapper


def test_ops_dispatch_to_triton(monkeypatch):
    """Under LLMPRESS_KERNELS=triton (on CUDA: always) each op runs its Triton kernel; under "reference", none."""
    calls = []
    for name in ("rms_norm", "add_rms_norm_", "silu_mul"):
        monkeypatch.setattr(triton_ops, name, _spy(getattr(triton_ops, name), calls))
    x, w = randn(2, 64, dtype=torch.bfloat16, seed=12), randn(64, dtype=torch.bfloat16, seed=13)
    for mode, expected in [("triton", ["rms_norm", "add_rms_norm_", "silu_mul"]), ("reference", [])]:
        monkeypatch.setenv("LLMPRESS_KERNELS", mode)
        calls.clear()
        ops.rms_norm(x, w, 1e-5)
        ops.add_rms_norm_(x.clone(), x, w, 1e-5)
        ops.silu_mul(x)
        assert calls == expected, mode


# ------------------------------------------------------------------------------------- compiled, without a GPU
_COMPILE = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from llmpress.engine import triton_ops as T

P = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16"}


def compile_(kernel, signature, constants, num_warps):
    signature = {**signature, **{name: "constexpr" for name in constants}}
    compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    assert compiled.asm["cubin"]


for act, other in [(torch.bfloat16, torch.float32), (torch.float16, torch.float16)]:  # mixed, and not
    compile_(T._rms_norm_kernel, {"x_ptr": P[act], "delta_ptr": P[other], "w_ptr": P[other],
             "y_ptr": P[torch.promote_types(act, other)], "eps": "fp32", "H": "i32"}, {"ADD": True, "BLOCK": 4096}, 8)
    compile_(T._rope_qkv_cache_kernel, {"qkv_ptr": P[act], "cos_ptr": P[act], "sin_ptr": P[act],
             "k_ptr": P[other], "v_ptr": P[other], "slots_ptr": "*i32", "q_ptr": P[act], "H": "i32", "KVH": "i32"},
             {"HALF": 64, "BLOCK": 64, "DT": T._TL[act]}, 1)
    compile_(T._silu_mul_kernel, {"gate_up_ptr": P[act], "y_ptr": P[act], "I": "i32"}, {"BLOCK": 1024}, 4)
"""


@pytest.mark.skipif(CUDA, reason="on a GPU every other test compiles the kernels")
def test_kernels_compile_for_hopper():
    """The interpreter runs the kernels as Python; the compiler also types every `if` (a name bound in both
    branches must keep one type) and lowers every cast. Compile each kernel, with mixed dtypes, to an sm_90
    cubin: no GPU needed, but a process without TRITON_INTERPRET (this one's kernels are interpreted)."""
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("triton's CUDA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
