"""The decoder's per-layer ops besides the Linears: fused C++ kernels (CPU), Triton ones (CUDA), torch references.

    rms_norm(x, w, eps)                 transformers' LlamaRMSNorm
    add_rms_norm_(x, delta, w, eps)     x += delta (the residual stream, in place), then rms_norm(x)
    rope_qkv_cache_(qkv, cos, sin, ...) rotary q/k of the fused qkv projection, k/v into the paged cache
    silu_mul(gate_up)                   SwiGLU's silu(gate) * up
    decode_attention(q, ...)            one new token per sequence against its paged KV cache

and two torch-only ops for the other architectures' layers (Gemma 3, sliding windows), which no kernel has:

    gelu_tanh_mul(gate_up)              GeGLU's gelu_tanh(gate) * up (Gemma)
    decode_attention_window(q, ...)     decode_attention over the last `window` tokens of each context

At decode a layer runs each on a handful of rows, where torch's dispatch of the ops they replace
(4-10 each) costs more than the arithmetic: fused, a SmolLM2 decode step spends ~2 ms less outside
the GEMMs. The fast path needs the extension (extension.available()), CPU float32 tensors and a
float32 cache; anything else takes the reference, which is also what tests/engine/test_ops.py
compares the kernels with on random inputs.

On CUDA tensors every op runs its Triton kernel (triton_ops.py, triton_attention.py; the reference when
triton is not installed, and for the other ops when an input is not contiguous float32 / bfloat16 / float16);
LLMPRESS_KERNELS=triton (read at each call) sends CPU tensors there too, which runs only under Triton's
interpreter (TRITON_INTERPRET=1), as tests/engine/test_triton_kernels.py and test_triton_ops.py do.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from . import extension, linear


@functools.cache
def _enabled() -> bool:
    """extension.available(), read once: these ops run ~150 times a decode step."""
    return extension.available()


def _fast(*tensors: torch.Tensor) -> bool:
    return _enabled() and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _triton(*tensors: torch.Tensor):
    """triton_ops when these tensors run the Triton kernels (linear.triton_wanted: CUDA with triton installed,
    or LLMPRESS_KERNELS=triton) and the kernels take them (contiguous float32 / bfloat16 / float16), else None."""
    if linear.triton_wanted(tensors[0].device) is None:
        return None
    if not all(t.is_contiguous() and t.dtype in _TRITON_DTYPES for t in tensors):
        return None
    from . import triton_ops  # imported on first use, as linear imports the other Triton modules

    return triton_ops


# ------------------------------------------------------------------------------------- RMSNorm
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, hidden] -> normalised in float32, scaled by weight [hidden], in x's dtype."""
    if x.dim() == 2 and (tri := _triton(x, weight)) is not None:
        return tri.rms_norm(x, weight, eps)
    if x.dim() == 2 and _fast(x, weight):
        return extension.load().rms_norm(x.contiguous(), weight.contiguous(), eps)
    return rms_norm_reference(x, weight, eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in float32, scale in the activation dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def add_rms_norm_(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x += delta in place (the residual add), then rms_norm(x)."""
    if x.dim() == 2 and delta.shape == x.shape and (tri := _triton(x, delta, weight)) is not None:
        return tri.add_rms_norm_(x, delta, weight, eps)
    if x.dim() == 2 and x.is_contiguous() and _fast(x, delta, weight):
        return extension.load().add_rms_norm_(x, delta.contiguous(), weight.contiguous(), eps)
    x.add_(delta)
    return rms_norm_reference(x, weight, eps)


# ------------------------------------------------------------------------------------- rotary + cache
def rope_qkv_cache_(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slots: torch.Tensor, num_heads: int, num_kv_heads: int,
) -> torch.Tensor:
    """qkv [T, (H + 2 KVH) D], cos / sin [T, D/2] -> q [T, H, D] rotated; the rotated k and v
    go to k_cache / v_cache [num_blocks, block_size, KVH, D] at flat slots [T]."""
    d = cos.shape[-1] * 2
    if (qkv.dim() == 2 and cos.dim() == 2 and slots.dim() == 1 and slots.is_contiguous()
            and slots.dtype in (torch.int32, torch.int64)
            and (tri := _triton(qkv, cos, sin, k_cache, v_cache)) is not None):
        return tri.rope_qkv_cache_(qkv, cos, sin, k_cache, v_cache, slots, num_heads, num_kv_heads)
    if d % 16 == 0 and qkv.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous() and _fast(qkv, cos, sin, k_cache, v_cache):
        return extension.load().rope_qkv_cache_(
            qkv, cos.contiguous(), sin.contiguous(), k_cache, v_cache, slots.to(torch.int64).contiguous(), num_heads, num_kv_heads
        )
    return rope_qkv_cache_reference(qkv, cos, sin, k_cache, v_cache, slots, num_heads, num_kv_heads)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D], cos/sin [T, 1, D/2]: the rotate-half convention of HF Llama."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rope_qkv_cache_reference(qkv, cos, sin, k_cache, v_cache, slots, num_heads, num_kv_heads) -> torch.Tensor:
    T, d = qkv.shape[0], cos.shape[-1] * 2
    qk, v = qkv.view(T, -1, d).split([num_heads + num_kv_heads, num_kv_heads], 1)
    qk = apply_rope(qk, cos.unsqueeze(1), sin.unsqueeze(1))  # q and k heads are adjacent: one rotation for both
    q, k = qk.split([num_heads, num_kv_heads], 1)
    k_cache.view(-1, num_kv_heads, d)[slots] = k.to(k_cache.dtype)
    v_cache.view(-1, num_kv_heads, d)[slots] = v.to(v_cache.dtype)
    return q


# ------------------------------------------------------------------------------------- SwiGLU
def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate, then up) -> silu(gate) * up [T, I]."""
    if gate_up.dim() == 2 and (tri := _triton(gate_up)) is not None:
        return tri.silu_mul(gate_up)
    if gate_up.dim() == 2 and gate_up.is_contiguous() and _fast(gate_up):
        return extension.load().silu_mul(gate_up)
    return silu_mul_reference(gate_up)


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_tanh_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate, then up) -> gelu_tanh(gate) * up [T, I] (transformers' gelu_pytorch_tanh)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up


# ------------------------------------------------------------------------------------- attention
def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
) -> torch.Tensor:
    """One new token per sequence against its paged KV cache.

    q [B, H, D] float32; k_cache, v_cache [num_blocks, block_size, KVH, D] float32; block_tables
    int [B, max_blocks]; context_lens int [B] (tokens to attend, the new one included); H a
    multiple of KVH (head h reads kv head h // (H / KVH)). -> out [B, H, D] = softmax(q K^T scale) V.
    On CUDA (or under LLMPRESS_KERNELS=triton) q and the caches may be float32, bfloat16 or float16."""
    mods = linear.triton_wanted(q.device)
    if mods is not None:
        return mods[1].decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
    fast = (
        q.device.type == "cpu" and _enabled() and q.dtype == k_cache.dtype == v_cache.dtype == torch.float32
        and k_cache.is_contiguous() and v_cache.is_contiguous() and q.shape[-1] % 8 == 0
    )
    if not fast:
        return decode_attention_reference(q, k_cache, v_cache, block_tables, context_lens, scale)
    return extension.load().decode_attention(
        q.contiguous(), k_cache, v_cache, block_tables.to(torch.int32).contiguous(),
        context_lens.to(torch.int32).contiguous(), float(scale),
    )


def decode_attention_reference(q, k_cache, v_cache, block_tables, context_lens, scale) -> torch.Tensor:
    """decode_attention in torch: gather each sequence's blocks, softmax(q K^T scale) V."""
    B, H, D = q.shape
    block_size, kvh = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros(B, H, D, dtype=torch.float32, device=q.device)
    for b in range(B):
        n = int(context_lens[b])
        if n == 0:
            continue
        blocks = block_tables[b, : math.ceil(n / block_size)].long()
        k = k_cache[blocks].reshape(-1, kvh, D)[:n].float().repeat_interleave(H // kvh, dim=1)  # [n, H, D]
        v = v_cache[blocks].reshape(-1, kvh, D)[:n].float().repeat_interleave(H // kvh, dim=1)
        p = torch.einsum("hd,nhd->hn", q[b].float(), k).mul(scale).softmax(-1)
        out[b] = torch.einsum("hn,nhd->hd", p, v)
    return out.to(q.dtype)


def decode_attention_window(q, k_cache, v_cache, block_tables, context_lens, scale, window: int) -> torch.Tensor:
    """decode_attention over only the last `window` tokens of each context (transformers' sliding window:
    key position > query position - window), which the kernels do not do. Batched torch with no host sync,
    so a CUDA graph can hold it; it reads every block of the tables: [B, max_blocks * block_size] keys a row.

    q [B, H, D]; caches [num_blocks, block_size, KVH, D]; block_tables [B, max_blocks]; context_lens [B]."""
    B, H, D = q.shape
    kvh = k_cache.shape[2]
    k = k_cache[block_tables.long()].flatten(1, 2).float().repeat_interleave(H // kvh, dim=2)  # [B, S, H, D]
    v = v_cache[block_tables.long()].flatten(1, 2).float().repeat_interleave(H // kvh, dim=2)
    pos = torch.arange(k.shape[1], device=q.device)  # [S]
    lens = context_lens.to(q.device).long().unsqueeze(1)  # [B, 1]: the new token sits at position len - 1
    keep = (pos < lens) & (pos > lens - 1 - window)
    scores = torch.einsum("bhd,bshd->bhs", q.float(), k) * scale  # [B, H, S]
    p = scores.masked_fill(~keep.unsqueeze(1), float("-inf")).softmax(-1)
    v = v.masked_fill(~keep[:, :, None, None], 0.0)  # slots outside the context may hold anything, NaN included
    return torch.einsum("bhs,bshd->bhd", p, v).to(q.dtype)
