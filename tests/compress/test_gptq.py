"""GPTQ must beat round-to-nearest on the layer-output error it minimises."""
import pytest
import torch

from llmpress.compress.gptq import HessianAccumulator, asymmetric_target, gptq_quantize, inverse_cholesky, rtn_quantize
from llmpress.quant import QuantArgs, dequantize


def _layer(rows=192, cols=256, tokens=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 0.05
    # correlated inputs with a few large channels, like real activations
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    X = torch.randn(tokens, cols, generator=g) @ mix
    X[:, :4] *= 8
    acc = HessianAccumulator(cols)
    for chunk in X.split(1000):
        acc.add(chunk)
    return W, X, acc.hessian()


def _out_err_db(W, X, Wq):
    ref = X @ W.T
    return 10 * torch.log10(((X @ Wq.T - ref) ** 2).sum() / (ref**2).sum()).item()


@pytest.mark.parametrize("args", [
    QuantArgs(4, "int", True, "group", 64, observer="minmax"),
    QuantArgs(4, "int", True, "group", 64, observer="mse"),
    QuantArgs(4, "int", True, "group", 64, observer="mse", actorder="weight"),
    QuantArgs(4, "int", False, "group", 128, observer="mse"),
    QuantArgs(8, "int", True, "channel", observer="mse"),
    QuantArgs(8, "float", True, "channel", observer="minmax"),  # FP8_DYNAMIC weights with --gptq
])
def test_gptq_beats_round_to_nearest(args):
    W, X, H = _layer()
    res = gptq_quantize(W, H, args, dampening_frac=0.01, scale_dtype=torch.float32)
    rtn = rtn_quantize(W, args, torch.float32)
    e_gptq = _out_err_db(W, X, dequantize(res.q, res.scale, res.zero_point))
    e_rtn = _out_err_db(W, X, dequantize(rtn.q, rtn.scale, rtn.zero_point))
    assert e_gptq < e_rtn - 1.0, (e_gptq, e_rtn)  # at least 1 dB less output error


def test_hessian_accumulator_matches_definition():
    X = torch.randn(300, 16)
    acc = HessianAccumulator(16)
    acc.add(X[:100])
    acc.add(X[100:].view(2, 100, 16))
    torch.testing.assert_close(acc.hessian(), 2 / 300 * X.T @ X)


def test_dead_columns_are_zeroed_without_nans():
    W, X, H = _layer(rows=32, cols=128)
    X[:, 5] = 0
    H = 2 / X.shape[0] * X.T @ X
    res = gptq_quantize(W, H, QuantArgs(4, "int", True, "group", 64), scale_dtype=torch.float32)
    dq = dequantize(res.q, res.scale, res.zero_point)
    assert torch.isfinite(dq).all()
    assert (dq[:, 5] == 0).all()


def test_cholesky_failure_retries_with_more_damping():
    H = -torch.eye(8)  # negative definite: fails at small damping
    msgs = []
    with pytest.raises(RuntimeError):
        inverse_cholesky(H, 0.0, warn=msgs.append)
    H = torch.zeros(8, 8)
    H[0, 0] = 1.0
    H[1, 1] = -0.05
    U, frac = inverse_cholesky(H, 0.1, warn=msgs.append)
    assert frac > 0.1 and any("retrying" in m for m in msgs)
    assert torch.isfinite(U).all()


def test_actorder_keeps_groups_contiguous():
    """Static act-order: the saved scale of column j is its natural group's (no g_idx)."""
    W, X, H = _layer(rows=16, cols=128)
    args = QuantArgs(4, "int", True, "group", 32, observer="minmax", actorder="weight")
    res = gptq_quantize(W, H, args, scale_dtype=torch.float32)
    assert res.scale.shape == (16, 4)
    q = res.q.float()
    assert q.min() >= -8 and q.max() <= 7


def _drifted(seed=0):
    """A layer whose quantized-model inputs X are the float model's X_fp plus an error correlated with them
    (what upstream quantization leaves), and H, D on GPTQ's 2/n scale."""
    W, X_fp, _ = _layer(rows=96, cols=128, tokens=3000, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    X = X_fp @ (torch.eye(128) + 0.05 * torch.randn(128, 128, generator=g)) + 0.05 * torch.randn(X_fp.shape, generator=g)
    n = X.shape[0]
    return W, X_fp, X, 2 / n * X.T @ X, 2 / n * (X_fp - X).T @ X


def test_asymmetric_target_is_the_least_squares_fit_to_the_float_output():
    W, X_fp, X, H, D = _drifted()
    got = asymmetric_target(W, H, D, dampening_frac=0.0)
    want = torch.linalg.lstsq(X.double(), (X_fp @ W.T).double()).solution.T.float()  # argmin ||X W'ᵀ - X_fp Wᵀ||
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * W.abs().max().item())  # float32 H vs float64
    assert torch.equal(asymmetric_target(W, H, torch.zeros_like(D), 0.1), W)  # no drift: W itself


def test_gptq_toward_the_float_output_beats_gptq_on_drifted_inputs():
    """The objective of float_target, ||Q x - W x_fp||²: GPTQ of the target against GPTQ of W itself."""
    args = QuantArgs(4, "int", True, "group", 64, observer="mse", actorder="weight")
    for seed in (0, 1, 2):
        W, X_fp, X, H, D = _drifted(seed)
        ref = X_fp @ W.T
        errs = []
        for target in (W, asymmetric_target(W, H, D, 0.1)):
            r = gptq_quantize(target, H, args, 0.1, torch.float32)
            errs.append(((X @ dequantize(r.q, r.scale, r.zero_point).T - ref) ** 2).sum().item())
        assert errs[1] < 0.8 * errs[0], (seed, errs)
