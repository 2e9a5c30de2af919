import pytest
import torch

from llmpress.compress.observers import minmax_qparams, mse_qparams
from llmpress.quant import QuantArgs, dequantize, fake_quantize, quantize


def _heavy_tailed(rows=256, cols=512, seed=0):
    """Gaussian weights with ~0.5% outliers 5x larger, like real LLM weights."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    return w * (1 + 4 * (torch.rand(rows, cols, generator=g) > 0.995))


@pytest.mark.parametrize("args", [
    QuantArgs(4, "int", True, "group", 64),
    QuantArgs(4, "int", False, "group", 128),
    QuantArgs(8, "int", True, "channel"),
    QuantArgs(8, "float", True, "channel"),
])
def test_mse_observer_never_worse_than_minmax(args):
    w = _heavy_tailed()
    err = {}
    for name, fn in (("minmax", minmax_qparams), ("mse", mse_qparams)):
        s, z = fn(w, args)
        err[name] = ((fake_quantize(w, s, z, args).float() - w) ** 2).sum().item()
    assert err["mse"] <= err["minmax"] * (1 + 1e-6)
    if args.num_bits == 4:  # with outliers, clipping must pay off clearly at 4 bits
        assert err["mse"] < 0.95 * err["minmax"]


def test_symmetric_int4_range_and_formula():
    args = QuantArgs(4, "int", True, "group", 64)
    w = torch.randn(8, 128)
    s, z = minmax_qparams(w, args, torch.float32)
    assert z is None and s.shape == (8, 2)
    expect = w.view(8, 2, 64).abs().amax(-1) / 7.5  # compressed-tensors: amax / ((qmax - qmin) / 2)
    torch.testing.assert_close(s, expect)
    q = quantize(w, s, z, args)
    assert q.dtype == torch.int8 and q.min() >= -8 and q.max() <= 7


def test_asymmetric_zero_point_covers_range():
    args = QuantArgs(4, "int", False, "channel")
    w = torch.rand(16, 64) + 0.5  # all positive: zero must still be representable
    s, z = minmax_qparams(w, args, torch.float32)
    dq = dequantize(quantize(w, s, z, args), s, z)
    assert (dq - w).abs().max() <= s.max() / 2 + 1e-6
    assert z.min() >= -8 and z.max() <= 7


def test_fp8_quantize_saturates_and_roundtrips():
    args = QuantArgs(8, "float", True, "channel")
    w = torch.randn(32, 64)
    s, _ = minmax_qparams(w, args, torch.float32)
    q = quantize(w, s, None, args)
    assert q.dtype == torch.float8_e4m3fn
    assert q.float().abs().max() <= 448
    rel = ((dequantize(q, s, None) - w).norm() / w.norm()).item()
    assert rel < 0.05  # e4m3 has 3 mantissa bits: ~2-3% relative error


def test_all_zero_group_gets_a_finite_scale():
    args = QuantArgs(4, "int", True, "group", 32)
    w = torch.zeros(4, 64)
    s, z = mse_qparams(w, args)
    assert torch.isfinite(s.float()).all() and (s > 0).all()
    assert (fake_quantize(w, s, z, args) == 0).all()


@pytest.mark.parametrize("args", [
    QuantArgs(4, "int", True, "group", 64),
    QuantArgs(4, "int", False, "group", 128),
    QuantArgs(8, "int", True, "channel"),
    QuantArgs(8, "float", True, "channel"),
])
def test_mse_search_in_row_chunks_equals_one_pass(args, monkeypatch):
    """The cache-sized row chunks (MSE_CHUNK_ELEMENTS) are an optimisation only: searching
    the whole tensor at once must choose the same scales and zero-points bit for bit."""
    from llmpress.compress import observers

    w = _heavy_tailed(rows=300, cols=512, seed=3)  # 300 rows: the last chunk is a partial one
    imp = torch.rand(512, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(observers, "MSE_CHUNK_ELEMENTS", 4096)  # 8 rows of 512 per chunk
    chunked = mse_qparams(w, args, importance=imp)
    monkeypatch.setattr(observers, "MSE_CHUNK_ELEMENTS", 1 << 40)  # one pass over all rows
    whole = mse_qparams(w, args, importance=imp)
    assert torch.equal(chunked[0], whole[0])
    assert (chunked[1] is None) == (whole[1] is None) == args.symmetric
    if chunked[1] is not None:
        assert torch.equal(chunked[1], whole[1])
