"""Paged decode attention in Triton (CUDA; on CPU tensors only under TRITON_INTERPRET=1, for tests).

One new token per sequence against its paged KV cache (vLLM's PagedAttention layout, Kwon et al. 2023), with
the online softmax of FlashAttention (Dao et al. 2022) over tiles of BLOCK_T tokens and, for long contexts at
small batch, FlashDecoding's split over the context (Dao et al. 2023): each split writes its un-normalised
output with its running max and sum, and `_merge_kernel` combines them.

One program per (sequence, kv head, split) serves the H / KVH query heads that share the kv head (GQA), so each
K/V row is read once; tokens are gathered through the block table one by one (token t of a sequence lives in
block block_tables[b, t // block_size] at row t % block_size), so any block size works. The context length is
read inside the kernel, so a decode step launches without a host sync and can be captured in a CUDA graph;
the grid depends only on shapes (block_tables' width bounds the context).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

BLOCK_T = 64  # tokens per tile: 4 blocks of 16; 16 KiB of bf16 K and V per tile at D = 128
SPLIT_MIN_TOKENS = 256  # a split gets at least this many tokens of block_tables' capacity
LOG2E = 1.4426950408889634


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, o_ptr, ml_ptr,
    qk_scale, block_size, tokens_per_split, H,
    stride_qb, stride_qh, stride_cb, stride_ct, stride_ch, stride_btb, stride_ob, stride_oh,
    GQA: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    SPLITS: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """q [B, H, D]; k/v cache [num_blocks, block_size, KVH, D] (strides in elements, D contiguous);
    bt int32 [B, max_blocks]; lens int32 [B]; qk_scale = softmax scale * log2(e) (exp2 below).
    SPLITS == 1: o [B, H, D] in o's dtype, normalised. Else o float32 [B, H, SPLITS, D] un-normalised and
    ml float32 [B, H, SPLITS, 2] (running max in log2 units, sum of exp2), for _merge_kernel."""
    b, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ctx = tl.load(lens_ptr + b)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, ctx)
    g = tl.arange(0, BLOCK_G)
    h = kvh * GQA + g  # query heads of this kv head; rows g >= GQA are padding (tl.dot needs 16 rows)
    d = tl.arange(0, BLOCK_D)
    hd_ok = (g < GQA)[:, None] & (d < D)[None, :]
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + h[:, None] * stride_qh + d[None, :], mask=hd_ok, other=0.0)
    q = q.to(DOT_DTYPE)  # unscaled: bf16 q times bf16 k is exact in float32, q * scale rounded to bf16 is not
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        tok = t0 + tl.arange(0, BLOCK_T)
        t_ok = tok < end
        blk = tl.load(bt_ptr + b.to(tl.int64) * stride_btb + tok // block_size, mask=t_ok, other=0)
        rows = blk.to(tl.int64) * stride_cb + (tok % block_size) * stride_ct + kvh * stride_ch  # [BLOCK_T]
        kv_ok = t_ok[:, None] & (d < D)[None, :]
        k = tl.load(k_ptr + rows[:, None] + d[None, :], mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=PRECISION) * qk_scale  # [BLOCK_G, BLOCK_T]
        s = tl.where(t_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every tile holds at least one token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + rows[:, None] + d[None, :], mask=kv_ok, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=PRECISION)
        m_i = m_new
    if SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # an empty context gives zeros
        tl.store(o_ptr + b.to(tl.int64) * stride_ob + h[:, None] * stride_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=hd_ok)
    else:
        row = (b.to(tl.int64) * H + h) * SPLITS + split  # [BLOCK_G]
        tl.store(o_ptr + row[:, None] * D + d[None, :], acc, mask=hd_ok)
        tl.store(ml_ptr + row * 2, m_i, mask=g < GQA)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=g < GQA)


@triton.jit
def _merge_kernel(part_ptr, ml_ptr, o_ptr, stride_ob, stride_oh, H,
                  SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per (sequence, head): o = sum_s 2^(m_s - m) acc_s / sum_s 2^(m_s - m) l_s, m = max_s m_s.
    Splits past the context have m_s = -inf and weigh nothing; a context of 0 tokens gives zeros."""
    b, h = tl.program_id(0), tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    row = (b.to(tl.int64) * H + h) * SPLITS + s
    m = tl.load(ml_ptr + row * 2, mask=s < SPLITS, other=float("-inf"))
    l_s = tl.load(ml_ptr + row * 2 + 1, mask=s < SPLITS, other=0.0)
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max > float("-inf"), m_max, 0.0)  # no inf - inf when every split is empty
    w = tl.where(m > float("-inf"), tl.exp2(m - m_max), 0.0)  # [BLOCK_S]
    l_sum = tl.sum(l_s * w, axis=0)
    acc = tl.load(part_ptr + row[:, None] * D + d[None, :], mask=(s < SPLITS)[:, None] & (d < D)[None, :], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0)  # [BLOCK_D]
    out = out / tl.where(l_sum > 0, l_sum, 1.0)
    tl.store(o_ptr + b.to(tl.int64) * stride_ob + h * stride_oh + d, out.to(o_ptr.dtype.element_ty), mask=d < D)


_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@functools.cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def num_splits_for(batch: int, kv_heads: int, max_tokens: int, device: torch.device) -> int:
    """Context splits so that batch x kv_heads x splits programs fill every SM about twice, each split covering
    at least SPLIT_MIN_TOKENS of the block table's capacity; 1 when the batch alone fills the GPU."""
    want = triton.cdiv(2 * _num_sms(device), batch * kv_heads)
    return max(1, min(want, triton.cdiv(max_tokens, SPLIT_MIN_TOKENS)))


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    context_lens: torch.Tensor, scale: float, num_splits: int | None = None,
) -> torch.Tensor:
    """ops.decode_attention's contract: q [B, H, D]; k_cache, v_cache [num_blocks, block_size, KVH, D] of one
    dtype (float32 / bfloat16 / float16); block_tables int [B, max_blocks]; context_lens int [B]; H a multiple
    of KVH. -> [B, H, D] in q's dtype = softmax(q K^T scale) V over each sequence's first context_lens tokens.
    `num_splits` forces the context split (tests); by default `num_splits_for` picks it from shapes."""
    bsz, heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    if heads % kv_heads or k_cache.stride(-1) != 1 or v_cache.stride() != k_cache.stride() or q.stride(-1) != 1:
        raise ValueError(f"decode_attention: {heads} query heads over {kv_heads} kv heads, caches with strides "
                         f"{k_cache.stride()} / {v_cache.stride()}: need H % KVH == 0 and equal, D-contiguous caches")
    block_tables = block_tables.to(torch.int32).contiguous()
    context_lens = context_lens.to(torch.int32).contiguous()
    max_tokens = block_tables.shape[1] * block_size
    splits = num_splits or num_splits_for(bsz, kv_heads, max_tokens, q.device)
    per_split = triton.cdiv(triton.cdiv(max_tokens, splits), BLOCK_T) * BLOCK_T
    splits = max(1, triton.cdiv(max_tokens, per_split))
    gqa = heads // kv_heads
    out = torch.empty_like(q)
    if bsz == 0:
        return out
    # bf16 / fp16 tensor-core dots on CUDA; float32 on CPU, where the interpreter cannot multiply bf16
    narrow = k_cache.dtype != torch.float32 and (q.is_cuda or k_cache.dtype == torch.float16)
    dot = _TL[k_cache.dtype] if narrow else tl.float32
    if splits > 1:
        part = torch.empty(bsz, heads, splits, dim, dtype=torch.float32, device=q.device)
        ml = torch.empty(bsz, heads, splits, 2, dtype=torch.float32, device=q.device)
        o, stride_ob, stride_oh = part, 0, 0
    else:
        part = ml = None
        o, stride_ob, stride_oh = out, out.stride(0), out.stride(1)
    _decode_kernel[(bsz, kv_heads, splits)](
        q, k_cache, v_cache, block_tables, context_lens, o, ml,
        float(scale) * LOG2E, block_size, per_split, heads,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        stride_ob, stride_oh,
        GQA=gqa, BLOCK_G=max(16, triton.next_power_of_2(gqa)), D=dim, BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_T=BLOCK_T, SPLITS=splits, DOT_DTYPE=dot, PRECISION="ieee" if dot == tl.float32 else None,
        num_warps=4, num_stages=2,
    )
    if splits > 1:
        _merge_kernel[(bsz, heads)](
            part, ml, out, out.stride(0), out.stride(1), heads,
            SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits), D=dim, BLOCK_D=triton.next_power_of_2(dim),
            num_warps=4,
        )
    return out
