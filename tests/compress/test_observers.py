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


def _block_error(w, scale, zp, args, H):
    """Per group, Δw_g H_gg Δw_gᵀ summed over the rows: [G]."""
    d = (fake_quantize(w, scale, zp, args).float() - w).reshape(w.shape[0], -1, args.group_size)
    S = args.group_size
    return torch.stack([torch.einsum("rs,st,rt->", d[:, i], H[i * S:(i + 1) * S, i * S:(i + 1) * S], d[:, i])
                        for i in range(d.shape[1])])


@pytest.mark.parametrize("args", [QuantArgs(4, "int", True, "group", 64), QuantArgs(4, "int", False, "group", 128)])
def test_output_mse_with_a_diagonal_hessian_is_the_weighted_mse_search(args):
    """With uncorrelated inputs (H = diag(h)) the group's output error is Σ h_j Δw_j²: the
    same objective as mse_qparams weighted by h, so the same ranges."""
    from llmpress.compress.observers import output_mse_qparams

    w = _heavy_tailed(rows=64, cols=512, seed=5)
    h = torch.rand(512, generator=torch.Generator().manual_seed(6)) + 0.1
    ours = output_mse_qparams(w, args, torch.diag(h), torch.float32)
    ref = mse_qparams(w, args, torch.float32, importance=h)
    assert (ours[0] == ref[0]).float().mean() > 0.99  # equal but for float32 ties in the sums
    torch.testing.assert_close(ours[0], ref[0], rtol=0.05, atol=0)


@pytest.mark.parametrize("args", [QuantArgs(4, "int", True, "group", 64), QuantArgs(4, "int", False, "group", 64)])
def test_output_mse_scores_the_output_through_correlated_inputs(args):
    """On correlated inputs with a few loud channels (what AWQ leaves behind), the output-scored
    search never does worse than min-max on any group's output error, and beats the weight-space
    MSE search on the total, which clips the loud columns as readily as the quiet ones."""
    from llmpress.compress.observers import output_mse_qparams

    g = torch.Generator().manual_seed(7)
    X = torch.randn(4096, 256, generator=g) @ (torch.eye(256) + 0.3 * torch.randn(256, 256, generator=g) / 16)
    X[:, [5, 70, 130, 200]] *= 20.0
    H = 2 / X.shape[0] * X.T @ X
    w = _heavy_tailed(rows=128, cols=256, seed=8)
    w[:, [5, 70, 130, 200]] *= 4.0  # the loud channels' weights scaled up, as AWQ scales them
    err = {name: _block_error(w, *qp, args, H) for name, qp in (
        ("output", output_mse_qparams(w, args, H, torch.float32)),
        ("mse", mse_qparams(w, args, torch.float32)),
        ("minmax", minmax_qparams(w, args, torch.float32)))}
    assert (err["output"] <= err["minmax"] * (1 + 1e-5)).all()
    assert err["output"].sum() < 0.9 * err["mse"].sum(), {k: v.sum().item() for k, v in err.items()}


def test_output_mse_in_row_chunks_equals_one_pass(monkeypatch):
    from llmpress.compress import observers

    args = QuantArgs(4, "int", False, "group", 64)
    w = _heavy_tailed(rows=300, cols=256, seed=9)
    X = torch.randn(1024, 256, generator=torch.Generator().manual_seed(10))
    H = X.T @ X / 512
    monkeypatch.setattr(observers, "MSE_CHUNK_ELEMENTS", 2048)
    chunked = observers.output_mse_qparams(w, args, H, torch.float32)
    monkeypatch.setattr(observers, "MSE_CHUNK_ELEMENTS", 1 << 40)
    whole = observers.output_mse_qparams(w, args, H, torch.float32)
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])


def test_output_mse_refuses_channel_strategy():
    from llmpress.compress.observers import output_mse_qparams

    with pytest.raises(ValueError, match="group"):
        output_mse_qparams(torch.randn(4, 8), QuantArgs(8, "int", True, "channel"), torch.eye(8))
