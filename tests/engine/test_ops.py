"""The fused per-layer ops (engine/ops.py) against their torch references and float64 truth.

Each fast path runs where the extension is built (extension.available()); under
LLMPRESS_KERNELS=reference the calls take the reference and the comparisons still hold. Tolerances
as in test_kernels.py: SQNR >= 80 dB against float64, where a wrong element, head, slot or sign
costs far more.
"""
from __future__ import annotations

import math

import pytest
import torch

from llmpress.engine import extension, ops

MIN_SQNR_DB = 80.0
FAST = extension.available()


def sqnr_db(y: torch.Tensor, truth: torch.Tensor) -> float:
    err = (y.double() - truth.double()).pow(2).sum().item()
    return math.inf if err == 0 else 10 * math.log10(truth.double().pow(2).sum().item() / err)


@pytest.mark.parametrize("t,hidden", [(1, 576), (5, 100), (300, 64)])
def test_rms_norm(t, hidden):
    g = torch.Generator().manual_seed(t)
    x, w = torch.randn(t, hidden, generator=g) * 3, torch.randn(hidden, generator=g)
    xd = x.double()
    truth = xd / xd.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt() * w.double()
    assert sqnr_db(ops.rms_norm(x, w, 1e-5), truth) >= MIN_SQNR_DB
    assert sqnr_db(ops.rms_norm_reference(x, w, 1e-5), truth) >= MIN_SQNR_DB
    delta = torch.randn(t, hidden, generator=g)
    x2 = x.clone()
    out = ops.add_rms_norm_(x2, delta, w, 1e-5)
    assert torch.equal(x2, x + delta)  # the residual stream is updated in place
    s = (xd + delta.double())
    assert sqnr_db(out, s / s.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt() * w.double()) >= MIN_SQNR_DB


def test_rms_norm_bf16_takes_the_reference():
    x, w = torch.randn(3, 64).bfloat16(), torch.randn(64).bfloat16()
    assert torch.equal(ops.rms_norm(x, w, 1e-6), ops.rms_norm_reference(x, w, 1e-6))


@pytest.mark.parametrize("h,kvh,d", [(9, 3, 64), (4, 4, 128), (2, 1, 16)])
@pytest.mark.parametrize("t", [1, 7])
def test_rope_qkv_cache(h, kvh, d, t):
    g = torch.Generator().manual_seed(h * d + t)
    qkv = torch.randn(t, (h + 2 * kvh) * d, generator=g)
    ang = torch.rand(t, d // 2, generator=g) * 50
    cos, sin = ang.cos(), ang.sin()
    slots = torch.randperm(4 * 8, generator=g)[:t]
    caches = [(torch.zeros(4, 8, kvh, d), torch.zeros(4, 8, kvh, d)) for _ in range(2)]
    q = ops.rope_qkv_cache_(qkv, cos, sin, *caches[0], slots, h, kvh)
    q_ref = ops.rope_qkv_cache_reference(qkv, cos, sin, *caches[1], slots, h, kvh)
    # float64 truth: rotate-half of every q and k head
    x = qkv.double().view(t, h + 2 * kvh, d)
    c, s = cos.double()[:, None], sin.double()[:, None]
    rot = torch.cat((x[..., : d // 2] * c - x[..., d // 2 :] * s, x[..., d // 2 :] * c + x[..., : d // 2] * s), -1)
    for out in (q, q_ref):
        assert out.shape == (t, h, d) and sqnr_db(out, rot[:, :h]) >= MIN_SQNR_DB
    for k_cache, v_cache in caches:
        assert sqnr_db(k_cache.view(-1, kvh, d)[slots], rot[:, h : h + kvh]) >= MIN_SQNR_DB
        assert torch.equal(v_cache.view(-1, kvh, d)[slots], qkv.view(t, -1, d)[:, h + kvh :])
        untouched = torch.ones(32, dtype=torch.bool)
        untouched[slots] = False
        assert k_cache.view(-1, kvh, d)[untouched].abs().max() == 0  # nothing written elsewhere
    if FAST:  # the same roundings as torch: bit-equal
        assert torch.equal(q, q_ref) and torch.equal(caches[0][0], caches[1][0])


@pytest.mark.skipif(not FAST, reason="the kernel's own checks")
def test_rope_rejects_a_slot_outside_the_cache():
    k, v = torch.zeros(2, 4, 1, 16), torch.zeros(2, 4, 1, 16)
    with pytest.raises(RuntimeError, match="slot 8 outside the cache"):
        ops.rope_qkv_cache_(torch.randn(1, 4 * 16), torch.ones(1, 8), torch.zeros(1, 8), k, v, torch.tensor([8]), 2, 1)


@pytest.mark.parametrize("t,i", [(1, 1536), (3, 100), (64, 37)])
def test_silu_mul(t, i):
    g = torch.Generator().manual_seed(i)
    gu = torch.randn(t, 2 * i, generator=g) * 6
    gu[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # the exp's clamp, and both zeros
    gate, up = gu.double().chunk(2, -1)
    truth = gate * torch.sigmoid(gate) * up
    assert sqnr_db(ops.silu_mul(gu), truth) >= MIN_SQNR_DB
    assert sqnr_db(ops.silu_mul_reference(gu), truth) >= MIN_SQNR_DB
    out = ops.silu_mul(gu)
    assert out.shape == (t, i) and torch.isfinite(out).all()
    assert torch.allclose(out, ops.silu_mul_reference(gu), rtol=1e-6, atol=1e-30)


def _paged(lens: list[int], kvh: int, d: int, block_size: int, seed: int):
    """Per-sequence K/V [L, KVH, D] scattered into a shuffled paged cache; returns both views."""
    g = torch.Generator().manual_seed(seed)
    need = [math.ceil(n / block_size) for n in lens]
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, generator=g)
    k_cache = torch.randn(num_blocks, block_size, kvh, d, generator=g)  # garbage outside the sequences
    v_cache = torch.randn(num_blocks, block_size, kvh, d, generator=g)
    tables = torch.full((len(lens), max(need) + 1), -1, dtype=torch.int32)
    seqs, used = [], 0
    for b, n in enumerate(lens):
        k, v = torch.randn(n, kvh, d, generator=g), torch.randn(n, kvh, d, generator=g)
        blocks = perm[used : used + need[b]]
        used += need[b]
        tables[b, : need[b]] = blocks.to(torch.int32)
        for t in range(n):
            k_cache[blocks[t // block_size], t % block_size] = k[t]
            v_cache[blocks[t // block_size], t % block_size] = v[t]
        seqs.append((k, v))
    return k_cache, v_cache, tables, seqs


@pytest.mark.parametrize("h,kvh,d,block_size", [(9, 3, 64, 16), (4, 4, 8, 4), (8, 2, 128, 32), (6, 1, 24, 8), (4, 2, 72, 16), (14, 2, 64, 16)])
def test_decode_attention(h, kvh, d, block_size):
    lens = [1, block_size, block_size + 1, 3 * block_size - 1, 150, 0]
    k_cache, v_cache, tables, seqs = _paged(lens, kvh, d, block_size, seed=h * d)
    q = torch.randn(len(lens), h, d)
    scale = d**-0.5
    out = ops.decode_attention(q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32), scale)
    ref = ops.decode_attention_reference(q, k_cache, v_cache, tables, torch.tensor(lens), scale)
    assert out.shape == (len(lens), h, d)
    for b, (k, v) in enumerate(seqs):
        if lens[b] == 0:
            assert out[b].abs().max() == 0 and ref[b].abs().max() == 0
            continue
        expect = torch.nn.functional.scaled_dot_product_attention(  # independent: SDPA on the contiguous K/V
            q[b][:, None].double(), k.transpose(0, 1).repeat_interleave(h // kvh, 0).double(),
            v.transpose(0, 1).repeat_interleave(h // kvh, 0).double(), scale=scale,
        )[:, 0]
        assert sqnr_db(out[b], expect) >= MIN_SQNR_DB, b
        assert sqnr_db(ref[b], expect) >= MIN_SQNR_DB, b




@pytest.mark.parametrize("window", [1, 5, 16, 1000])
def test_decode_attention_window(window):
    """Only each context's last `window` keys (transformers' sliding window), against SDPA on those keys."""
    h, kvh, d, block_size = 6, 2, 32, 4
    lens = [1, 4, 5, 17, 40]
    k_cache, v_cache, tables, seqs = _paged(lens, kvh, d, block_size, seed=window)
    q = torch.randn(len(lens), h, d)
    out = ops.decode_attention_window(q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32), d**-0.5,
                                      window=window)
    for b, (k, v) in enumerate(seqs):
        k, v = k[-window:], v[-window:]
        expect = torch.nn.functional.scaled_dot_product_attention(
            q[b][:, None].double(), k.transpose(0, 1).repeat_interleave(h // kvh, 0).double(),
            v.transpose(0, 1).repeat_interleave(h // kvh, 0).double(), scale=d**-0.5,
        )[:, 0]
        assert sqnr_db(out[b], expect) >= MIN_SQNR_DB, b
