"""GPTQ's memory-lean paths (one [cols, cols] buffer for the damped Hessian, its Cholesky
factor, inverse and upper factor; bf16 Hessian products added block by block) against the
previous algorithm, kept here verbatim as the reference: the Hessian sums must be bit-identical,
GPTQ's outputs the same to float32 rounding (its factor now comes by another exact route, its
columns in another summation order)."""
import pytest
import torch

from llmpress.compress.gptq import HessianAccumulator, _one_group, gptq_quantize, inverse_cholesky
from llmpress.compress.observers import observe
from llmpress.quant import QuantArgs


def _ref_inverse_cholesky(H, dampening_frac, warn):
    mean_diag = torch.mean(torch.diag(H)).item()
    frac = dampening_frac
    original = H.diagonal().clone()
    try:
        for _ in range(6):
            H.diagonal().copy_(original).add_(frac * mean_diag)
            L, info = torch.linalg.cholesky_ex(H)
            if info == 0:
                Hinv = torch.cholesky_inverse(L)
                del L
                U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
                if info == 0:
                    return U, frac
            warn(f"retrying with {frac * 10:g}")
            frac *= 10
    finally:
        H.diagonal().copy_(original)
    raise RuntimeError("not positive definite")


def _ref_gptq(W, H, args, dampening_frac, scale_dtype, block_size=128, warn=print):
    """gptq.gptq_quantize before the memory work (commit ed27b84), four [cols, cols] matrices at its peak."""
    W = W.detach().float().clone()
    H_in = H.detach().float()
    rows, cols = W.shape
    group = args.group_size if args.strategy == "group" else None
    if group:
        block_size = group * max(1, block_size // group) if group <= block_size else group
    importance = torch.diag(H_in).clone()
    dead = importance == 0
    importance[dead] = 1.0
    W[:, dead] = 0.0
    static = args.actorder is not None or not group
    if static:
        scale, zp = observe(W, args, scale_dtype, importance)
    else:
        scale = torch.empty(rows, cols // group, dtype=scale_dtype)
        zp = None if args.symmetric else torch.empty(rows, cols // group, dtype=torch.int8)
    perm = torch.argsort(importance, descending=True) if args.actorder is not None else None
    H = H_in.index_select(0, perm).index_select(1, perm) if perm is not None else H_in.clone()
    if perm is not None:
        W, dead = W[:, perm], dead[perm]
    H.diagonal()[dead] = 1.0
    U, used_frac = _ref_inverse_cholesky(H, dampening_frac, warn)
    del H
    gidx = torch.arange(cols) // group if group else torch.zeros(cols, dtype=torch.long)
    gidx = (gidx[perm] if perm is not None else gidx).tolist()
    scale_f = scale.float() if static else None
    zp_f = zp.float() if static and zp is not None else None
    qmin, qmax, is_float = args.qmin, args.qmax, args.type == "float"
    round_scale = scale_dtype != torch.float32
    Q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn if is_float else torch.int8)
    losses = torch.zeros(())
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.empty_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if not static and c % group == 0:
                s, z = observe(W1[:, i : i + group], _one_group(args), scale_dtype, importance[c : c + group])
                scale[:, c // group] = s[:, 0]
                if zp is not None:
                    zp[:, c // group] = z[:, 0]
            g = gidx[c]
            s = scale_f[:, g] if static else scale[:, g].float()
            z = 0.0 if zp is None else (zp_f[:, g] if static else zp[:, g].float())
            w = W1[:, i]
            if is_float:
                q8 = (w / s).clamp_(qmin, qmax).to(torch.float8_e4m3fn)
                Q[:, c] = q8
                q = q8.float()
            else:
                q = torch.round(w / s + z).clamp_(qmin, qmax)
                Q[:, c] = q
            dq = (q - z) * s
            if round_scale:
                dq = dq.to(scale_dtype).float()
            err = (w - dq) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            Err1[:, i] = err
        losses += (Err1**2).sum() / 2
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)
    q = Q if perm is None else Q.view(torch.uint8)[:, torch.argsort(perm)].view(Q.dtype)
    return q, scale, zp, float(losses), used_frac


def _problem(rows, cols, seed, dtype=torch.float32, dead=(), indefinite=False):
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(rows, cols, generator=g) * 0.05).to(dtype)
    X = torch.randn(2 * cols, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols))
    X[:, :3] *= 20  # outlier channels, so act-order moves them first
    X[:, list(dead)] = 0
    H = 2 / X.shape[0] * X.T @ X
    if indefinite:  # a direction of negative curvature: the first dampening fails, a retry succeeds
        v = torch.randn(cols, generator=g)
        v /= v.norm()
        H -= (torch.linalg.eigvalsh(H)[-1] * 0.05) * torch.outer(v, v) + 0.5 * H.diagonal().mean() * torch.outer(v, v)
    return W, H


@pytest.mark.parametrize("args", [
    QuantArgs(4, "int", True, "group", 128, observer="mse"),  # W4A16
    QuantArgs(4, "int", False, "group", 128, observer="minmax"),  # W4A16_ASYM
    QuantArgs(4, "int", True, "group", 128, observer="mse", actorder="weight"),
    QuantArgs(8, "int", True, "channel", observer="mse"),  # W8A8
    QuantArgs(8, "int", True, "channel", observer="minmax", actorder="weight"),
    QuantArgs(8, "float", True, "channel", observer="minmax"),
])
@pytest.mark.parametrize("case", ["plain", "bf16 weight + dead inputs", "retry"])
def test_gptq_matches_previous_algorithm(args, case):
    """The same algorithm to float32 rounding: the same damping and retries, H untouched, and the
    same codes, scales and loss up to the few roundings that rounding noise moves across a tie."""
    W, H = _problem(96, 384, seed=len(case) + args.num_bits, dtype=torch.bfloat16 if "bf16" in case else torch.float32,
                    dead=(7, 200) if "dead" in case else (), indefinite=case == "retry")
    H0 = H.clone()
    msgs_ref, msgs = [], []
    q, scale, zp, loss, frac = _ref_gptq(W, H, args, 0.01, torch.bfloat16, warn=msgs_ref.append)
    res = gptq_quantize(W, H, args, 0.01, torch.bfloat16, warn=msgs.append)
    assert torch.equal(H, H0), "H is shared by gate / up: it must not change"
    assert (frac > 0.01) == (case == "retry") and len(msgs) == len(msgs_ref)
    assert res.damping == frac
    same = (res.q.view(torch.uint8) == q.view(torch.uint8)).float().mean().item()
    print(f"codes {same:.5f} scales {(res.scale == scale).float().mean().item():.5f} loss {res.loss / loss - 1:.2e}")
    assert same >= 0.99
    assert (res.scale == scale).float().mean() >= 0.999
    assert (zp is None and res.zero_point is None) or (res.zero_point == zp).float().mean() >= 0.999
    assert res.loss == pytest.approx(loss, rel=1e-3)


def _ref_upper_product(acc: HessianAccumulator, x: torch.Tensor) -> torch.Tensor:
    """HessianAccumulator._upper_product before the memory work: a whole [cols, cols] product per chunk."""
    P = torch.zeros(acc.cols, acc.cols)
    for i, j, b in acc._blocks():
        P[i : i + b, j : j + b] = x[:, i : i + b].T @ x[:, j : j + b]
    amax = x.abs().amax(0).float()
    big = torch.nonzero(amax > acc.OUTLIER_FACTOR * amax.median()).flatten()[:64]
    if big.numel():
        exact = x.float().T @ x[:, big].float()
        P[:, big] = exact
        P[big, :] = exact.T
    return P


@pytest.mark.parametrize("cols,outliers", [(640, (3, 170, 171, 639)), (514, ()), (1024, tuple(range(0, 1024, 9)))])
def test_bf16_hessian_blocks_bit_identical(cols, outliers):
    """bf16 inputs: the block-by-block sum equals the previous whole-product sum bit for bit, with outlier
    channels in several blocks (on block edges, more than the 64 kept) and with none."""
    g = torch.Generator().manual_seed(cols)
    x = torch.randn(1100, cols, generator=g)
    x[:, list(outliers)] *= 300
    x = x.to(torch.bfloat16)
    acc, ref = HessianAccumulator(cols), HessianAccumulator(cols)
    acc.add(x)
    for chunk in x.split(512):
        ref.sum += _ref_upper_product(ref, chunk)
    ref.n = x.shape[0]
    assert torch.equal(acc.hessian(), ref.hessian())


@pytest.mark.parametrize("cols,actorder,dead", [(384, False, ()), (385, True, (7, 200)), (1000, True, ())])
def test_inverse_cholesky_factor(cols, actorder, dead):
    """The factor by Cholesky + triangular inverse of the reversed H' is the three-step one (to float32
    rounding) and satisfies UᵀU (H' + λI) = I in float64, in the visiting order, with dead columns."""
    _, H = _problem(8, cols, seed=cols, dead=dead)
    perm = torch.argsort(H.diagonal(), descending=True) if actorder else None
    dead_t = (H.diagonal() == 0)[perm] if perm is not None else H.diagonal() == 0
    U, frac = inverse_cholesky(H, 0.01, print, perm, dead_t)
    Hp = H[perm][:, perm] if perm is not None else H.clone()
    Hp.diagonal()[dead_t] = 1.0
    Hp.diagonal().add_(frac * Hp.diagonal().mean())
    U_ref, _ = _ref_inverse_cholesky(Hp.clone(), 0.0, print)
    assert torch.equal(U, U.triu()) and (U.diagonal() > 0).all()
    assert (U - U_ref).abs().max() <= 1e-4 * U_ref.abs().max()
    eye = U.double().T @ U.double() @ Hp.double()
    assert (eye - torch.eye(cols, dtype=torch.float64)).abs().max() < 1e-3
