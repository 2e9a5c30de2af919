"""The decoder's per-layer ops besides the Linears and attention, one Triton kernel each (CUDA; on CPU tensors
only under TRITON_INTERPRET=1, for tests).

On CUDA, ops.py's torch references launch ~25 small kernels a layer; at decode, on a handful of rows, their
launches cost more than their bytes (~100 us a layer for an 8B model on an H200, half a bf16 decode step). Here
each op is one launch. Every kernel does the reference's arithmetic in float32 and rounds to the activation dtype
where the reference's torch ops round (torch computes a bf16 / fp16 elementwise op in float32 and rounds once,
and a product of two bf16 or fp16 values is exact in float32), so outputs agree with the reference up to float32
differences (rsqrt, exp, summation order, fused multiply-adds): ~1e-7 relative in float32, and in bf16 / fp16
the rare value those move across a rounding boundary.

Contract: contiguous tensors of float32 / bfloat16 / float16 (ops.py checks, and takes the reference otherwise).
No host syncs and grids from shapes only, so a decode step that calls these can be captured in a CUDA graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SILU_BLOCK = 1024  # intermediate columns per silu_mul program: an 8B model's 14336 spread over 14 programs a row


@triton.jit
def _rms_norm_kernel(x_ptr, delta_ptr, w_ptr, y_ptr, eps, H, ADD: tl.constexpr, BLOCK: tl.constexpr):
    """One program per row. ADD: x += delta in place first (rounded to x's dtype, as torch's add_), then the
    norm of the updated row. y = (x * rsqrt(mean(x^2) + eps) rounded to x's dtype) * w, in y's dtype."""
    row = tl.program_id(0).to(tl.int64) * H
    i = tl.arange(0, BLOCK)
    ok = i < H
    x = tl.load(x_ptr + row + i, mask=ok, other=0.0)
    if ADD:
        delta = tl.load(delta_ptr + row + i, mask=ok, other=0.0)
        x = (x.to(tl.float32) + delta.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + row + i, x, mask=ok)
    xf = x.to(tl.float32)
    r = tl.rsqrt(tl.sum(xf * xf, axis=0) / H + eps)
    normed = (xf * r).to(x_ptr.dtype.element_ty).to(tl.float32)  # LlamaRMSNorm: back to x's dtype, then * w
    w = tl.load(w_ptr + i, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row + i, (normed * w).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _rope_qkv_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, slots_ptr, q_ptr, H, KVH,
                           HALF: tl.constexpr, BLOCK: tl.constexpr, DT: tl.constexpr):
    """One program per (token, head of qkv): heads [0, H) are q, [H, H + KVH) k, the rest v. q and k heads
    are rotated (HF Llama's rotate-half: x1 cos - x2 sin, x2 cos + x1 sin), each product and sum rounded to
    DT (the reference's dtype: qkv's and cos / sin's promoted); q goes to q [T, H, D], k and v to their
    caches [num_blocks, block_size, KVH, D] at flat row slots[t] (k and v in the caches' dtypes)."""
    t, h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i = tl.arange(0, BLOCK)
    ok = i < HALF
    src = qkv_ptr + (t * (H + 2 * KVH) + h) * (2 * HALF)
    x1 = tl.load(src + i, mask=ok, other=0.0)
    x2 = tl.load(src + HALF + i, mask=ok, other=0.0)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    # each branch stores through its own names: a name bound in both branches of an `if` must keep one type
    if h >= H + KVH:  # v: a copy into the cache
        v_row = v_ptr + (slot * KVH + (h - H - KVH)) * (2 * HALF)
        tl.store(v_row + i, x1.to(v_ptr.dtype.element_ty), mask=ok)
        tl.store(v_row + HALF + i, x2.to(v_ptr.dtype.element_ty), mask=ok)
    else:
        a, b = x1.to(tl.float32), x2.to(tl.float32)
        c = tl.load(cos_ptr + t * HALF + i, mask=ok, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + t * HALF + i, mask=ok, other=0.0).to(tl.float32)
        lo = ((a * c).to(DT).to(tl.float32) - (b * s).to(DT).to(tl.float32)).to(DT)
        hi = ((b * c).to(DT).to(tl.float32) + (a * s).to(DT).to(tl.float32)).to(DT)
        if h < H:
            q_row = q_ptr + (t * H + h) * (2 * HALF)
            tl.store(q_row + i, lo.to(q_ptr.dtype.element_ty), mask=ok)
            tl.store(q_row + HALF + i, hi.to(q_ptr.dtype.element_ty), mask=ok)
        else:
            k_row = k_ptr + (slot * KVH + (h - H)) * (2 * HALF)
            tl.store(k_row + i, lo.to(k_ptr.dtype.element_ty), mask=ok)
            tl.store(k_row + HALF + i, hi.to(k_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _silu_mul_kernel(gate_up_ptr, y_ptr, I, BLOCK: tl.constexpr):
    """Programs (row, column block): y = silu(gate) * up, silu's output rounded to y's dtype as F.silu's is."""
    row, cols = tl.program_id(0).to(tl.int64), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < I
    gate = tl.load(gate_up_ptr + row * 2 * I + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * 2 * I + I + cols, mask=ok, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(y_ptr.dtype.element_ty).to(tl.float32)
    tl.store(y_ptr + row * I + cols, (act * up).to(y_ptr.dtype.element_ty), mask=ok)


_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _row_warps(block: int) -> int:
    """Warps for a one-row program: ~16 elements a thread (8 warps for a 4096-wide row), 1 to 16."""
    return min(16, max(1, block // 512))


def _norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    rows, hidden = x.shape
    if weight.shape != (hidden,):
        raise ValueError(f"rms_norm: weight of shape {tuple(weight.shape)} for rows of {hidden}: need ({hidden},)")
    y = torch.empty(rows, hidden, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if rows:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(rows,)](x, x if delta is None else delta, weight, y, float(eps), hidden,
                                  ADD=delta is not None, BLOCK=block, num_warps=_row_warps(block))
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, hidden], weight [hidden] -> ops.rms_norm_reference's result: in x's and weight's promoted dtype."""
    return _norm(x, None, weight, eps)


def add_rms_norm_(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x += delta in place (delta [T, hidden] of any of the three dtypes), then rms_norm(x, weight, eps)."""
    if delta.shape != x.shape:
        raise ValueError(f"add_rms_norm_: delta of shape {tuple(delta.shape)} for x of {tuple(x.shape)}")
    return _norm(x, delta, weight, eps)


def rope_qkv_cache_(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slots: torch.Tensor, num_heads: int, num_kv_heads: int,
) -> torch.Tensor:
    """ops.rope_qkv_cache_'s contract: qkv [T, (H + 2 KVH) D], cos / sin [T, D/2], caches [num_blocks,
    block_size, KVH, D], slots int [T] (distinct rows of the flattened cache) -> q [T, H, D] rotated, in the
    dtype of qkv, cos and sin promoted; the rotated k and v written into the caches at the slots."""
    tokens, half = cos.shape
    heads = num_heads + 2 * num_kv_heads
    if (qkv.shape != (tokens, heads * 2 * half) or sin.shape != cos.shape or slots.shape != (tokens,)
            or k_cache.shape != v_cache.shape or tuple(k_cache.shape[2:]) != (num_kv_heads, 2 * half)):
        raise ValueError(f"rope_qkv_cache_: qkv {tuple(qkv.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}, "
                         f"slots {tuple(slots.shape)}, caches {tuple(k_cache.shape)} / {tuple(v_cache.shape)} do not "
                         f"fit {num_heads} heads and {num_kv_heads} kv heads")
    dt = torch.promote_types(torch.promote_types(qkv.dtype, cos.dtype), sin.dtype)
    q = torch.empty(tokens, num_heads, 2 * half, dtype=dt, device=qkv.device)
    if tokens:
        _rope_qkv_cache_kernel[(tokens, heads)](
            qkv, cos, sin, k_cache, v_cache, slots, q, num_heads, num_kv_heads,
            HALF=half, BLOCK=triton.next_power_of_2(half), DT=_TL[dt], num_warps=1,
        )
    return q


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate, then up) -> silu(gate) * up [T, I] in gate_up's dtype."""
    rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
    if gate_up.shape[1] % 2:
        raise ValueError(f"silu_mul: gate_up of {gate_up.shape[1]} columns: need an even number (gate, then up)")
    y = torch.empty(rows, inter, dtype=gate_up.dtype, device=gate_up.device)
    if rows and inter:
        block = min(SILU_BLOCK, triton.next_power_of_2(inter))
        _silu_mul_kernel[(rows, triton.cdiv(inter, block))](gate_up, y, inter, BLOCK=block, num_warps=4)
    return y
