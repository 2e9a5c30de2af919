"""Prefill attention's CPU path (grouped batched GEMMs, in query chunks) against torch's
scaled_dot_product_attention on random inputs: GQA, a cached prefix, sliding windows, and
chunks forced small so that every chunk boundary is crossed."""
from __future__ import annotations

import pytest
import torch

from llmpress.engine import model
from llmpress.engine.model import AttnSegment, KVLayer, prefill_attention, prefill_attention_reference


def _case(n: int, ctx: int, H: int, KVH: int, D: int = 32, block: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    blocks = -(-ctx // block) + 2
    cache = KVLayer(torch.randn(blocks, block, KVH, D, generator=g), torch.randn(blocks, block, KVH, D, generator=g))
    table = torch.randperm(blocks, generator=g).tolist()  # blocks out of order, as the allocator hands them out
    q = torch.randn(n, H, D, generator=g)
    return q, cache, AttnSegment(0, n, ctx, table)


@pytest.mark.parametrize("n,ctx,H,KVH,window", [
    (37, 37, 8, 2, None),    # a whole prompt, 4 query heads per KV head
    (20, 53, 6, 6, None),    # after a 33-token cached prefix, no GQA
    (40, 40, 4, 1, 7),       # sliding window, one KV head
    (25, 61, 8, 4, 30),      # window and prefix
])
@pytest.mark.parametrize("rows", [None, 1, 7])  # query rows a chunk: all at once, one, seven
def test_prefill_attention_matches_sdpa(n, ctx, H, KVH, window, rows, monkeypatch):
    if rows is not None:
        monkeypatch.setattr(model, "_SCORE_CHUNK_FLOATS", rows * H * ctx)
    q, cache, seg = _case(n, ctx, H, KVH)
    k, v = cache.gather(seg.block_table, ctx)
    ref = prefill_attention_reference(q, k, v, 0.17, window)
    out = prefill_attention(q, cache, seg, 0.17, window)
    assert out.shape == (n, H, q.shape[2])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_reference_path_for_other_dtypes():
    q, cache, seg = _case(9, 9, 4, 2)
    q = q.double()
    cache = KVLayer(cache.k.double(), cache.v.double())
    k, v = cache.gather(seg.block_table, 9)
    torch.testing.assert_close(prefill_attention(q, cache, seg, 0.3, None), prefill_attention_reference(q, k, v, 0.3, None))
