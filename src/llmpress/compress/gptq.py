"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"), as pure tensor functions.

Quantize W [rows, cols] column by column; after each column, spread its
rounding error over the not-yet-quantized columns with the inverse Hessian of
the layer-wise objective ||WX - QX||², H = 2/n Σ x xᵀ. Lazy batch updates over
blocks of 128 columns keep the work in matmuls; the upper Cholesky factor of
H⁻¹ gives the needed rows of the inverse without re-inverting.

Scales:
- "group" without act-order: each group's scale is computed when GPTQ reaches
  the group, from the columns as already updated by the error of earlier
  columns (error-compensated scales), using the scheme's observer weighted by
  diag(H);
- act-order ("weight" / static groups): columns are visited by decreasing
  diag(H), but groups stay contiguous with scales fixed up front from the
  original weight, so the checkpoint needs no g_idx;
- "channel": one scale per row, computed up front.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..quant import QuantArgs, quantize
from .observers import observe, output_mse_qparams

BLOCK_SIZE = 128
SUB_BLOCK = 32  # columns between in-block matmul updates (16-32 measured best at 8B shapes)


@dataclass
class GPTQResult:
    q: torch.Tensor  # [rows, cols] int8 or float8
    scale: torch.Tensor  # [rows, G]
    zero_point: torch.Tensor | None  # [rows, G] int8
    loss: float  # Σ err² / d over columns: GPTQ's own estimate of the output error
    damping: float  # the dampening fraction that made H positive definite


class HessianAccumulator:
    """Running H = 2/n Σ x xᵀ over calibration rows, in float32 (sum kept unnormalised).

    H is symmetric, so for wide inputs only the upper block triangle of 4x4 blocks
    is multiplied (10 of 16 blocks: 62% of the FLOPs of x.T @ x)."""

    BLOCKS = 4

    def __init__(self, cols: int, device: torch.device | str = "cpu"):
        self.sum = torch.zeros(cols, cols, dtype=torch.float32, device=device)
        self.n = 0
        self.cols = cols

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])  # [tokens, cols]
        if x.dtype != torch.bfloat16:
            x = x.float()
        self.n += x.shape[0]
        # bf16 activations (CPUs with bf16 dot products, GPUs): multiply in bf16, 512 rows at
        # a time, and sum in float32. The bf16 rounding of each product entry is relative to
        # the entry, so the rows/columns of "massive activation" channels (Sun et al. 2024)
        # carry large absolute errors that can outweigh the dampening and break Cholesky:
        # those few columns are recomputed exactly in float32.
        if x.dtype != torch.bfloat16 and self.cols >= 512:  # float32: accumulate in place, no [cols, cols] temporary
            for i, j, b in self._blocks():
                self.sum[i : i + b, j : j + b].addmm_(x[:, i : i + b].T, x[:, j : j + b])
            return
        for chunk in x.split(512) if x.dtype == torch.bfloat16 else (x,):
            if self.cols >= 512:  # bf16: block by block into the sum, no [cols, cols] temporary
                self._add_upper_blocks(chunk)
            else:
                self.sum += self._upper_product(chunk)

    def _blocks(self):
        """(i, j, b): the upper block triangle, b x b blocks (the last ones may be narrower)."""
        b = -(-self.cols // self.BLOCKS)
        return [(i, j, b) for i in range(0, self.cols, b) for j in range(i, self.cols, b)]

    OUTLIER_FACTOR = 8.0  # a channel whose max |x| is 8x the median channel's is recomputed exactly

    def _upper_product(self, x: torch.Tensor) -> torch.Tensor:
        """x [tokens, cols < 512] -> xᵀx [cols, cols] float32, outlier channels exact."""
        P = (x.T @ x).float()
        big, exact = self._outliers(x)
        if big is not None:
            P[:, big] = exact
            P[big, :] = exact.T
        return P

    def _add_upper_blocks(self, x: torch.Tensor) -> None:
        """sum += xᵀx over the upper block triangle, x [tokens, cols >= 512] bf16: each block's
        product (with the outlier channels' exact rows and columns) is added as it is made, so
        the peak is the sum plus one [cols/4, cols/4] block, not two [cols, cols] matrices
        (1.6 GB at an 8B model's down_proj). The same values as summing the whole product."""
        big, exact = self._outliers(x)
        for i, j, b in self._blocks():
            P = (x[:, i : i + b].T @ x[:, j : j + b]).float()  # [b, b]
            if big is not None:
                in_j = (big >= j) & (big < j + b)
                P[:, big[in_j] - j] = exact[i : i + b, in_j]
                in_i = (big >= i) & (big < i + b)
                P[big[in_i] - i, :] = exact[j : j + b, in_i].T
            self.sum[i : i + b, j : j + b] += P

    def _outliers(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """bf16 x: the "massive activation" channels (at most 64) and their exact products
        x.float()ᵀ x[:, big] [cols, k]; (None, None) when there are none or x is float."""
        if x.dtype != torch.bfloat16:
            return None, None
        amax = x.abs().amax(0).float()
        big = torch.nonzero(amax > self.OUTLIER_FACTOR * amax.median()).flatten()[:64]
        if not big.numel():
            return None, None
        return big, x.float().T @ x[:, big].float()

    def hessian(self) -> torch.Tensor:
        """H, built in the accumulator's own buffer (no [cols, cols] temporaries: for an 8B
        model's down_proj each is 235 MB); the accumulator is spent afterwards."""
        H, self.sum = self.sum, None
        if H is None:
            raise RuntimeError("hessian() was already taken from this accumulator")
        if self.cols >= 512:  # mirror the upper block triangle: the same values as triu(H) + triu(H, 1).T
            for i, j, b in self._blocks():
                if i == j:
                    d = H[i : i + b, i : i + b]
                    d.copy_(torch.triu(d) + torch.triu(d, 1).T)
                else:
                    H[j : j + b, i : i + b] = H[i : i + b, j : j + b].T
        return H.mul_(2.0 / max(self.n, 1))


def inverse_cholesky(
    H: torch.Tensor,
    dampening_frac: float,
    warn=print,
    perm: torch.Tensor | None = None,
    dead: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor U of (H' + λI)⁻¹ (so (H' + λI)⁻¹ = UᵀU) with λ = frac·mean(diag H'),
    where H' is H in the visiting order `perm` with the diagonal of `dead` columns (given in that
    order) set to 1. When H' is not positive definite at that damping, retry with 10x more and say so.

    H is only read. Everything happens in one more [cols, cols] buffer, column-major like LAPACK's,
    that the factorizations overwrite in place: two matrices at the peak instead of four (3.3 GB ->
    1.6 GB at an 8B model's down_proj).

    On the CPU, U comes from one Cholesky and one triangular inverse (2/3 n³ FLOPs) instead of
    Cholesky, inverse and Cholesky again (4/3 n³): with J the order reversal, if J H' J = L Lᵀ then
    H'⁻¹ = J L⁻ᵀ L⁻¹ J = UᵀU for U = J L⁻¹ J, which is upper triangular with a positive diagonal,
    so it is the (unique) factor the three-step route gives. At an 8B model's down_proj (14336²,
    2 cores) 16.8 s -> 7.2 s; the two agree to float32 rounding (tests/compress/test_gptq_memory.py)."""
    cols = H.shape[0]
    fast = H.device.type == "cpu"
    S = torch.empty(cols, cols, dtype=torch.float32, device=H.device).mT  # [cols, cols], column-major
    order = perm
    if fast:  # factor H' in reversed order, see above
        order = (perm if perm is not None else torch.arange(cols, device=H.device)).flip(0)
        dead = dead.flip(0) if dead is not None else None
    _fill_visiting_order(S, H, order)
    if dead is not None:
        S.diagonal()[dead] = 1.0
    original = S.diagonal().clone()
    mean_diag = torch.mean(original).item()
    info = torch.empty((), dtype=torch.int32, device=H.device)
    frac = dampening_frac
    for attempt in range(6):
        if attempt:  # the failed factorization overwrote S
            _fill_visiting_order(S, H, order)
        S.diagonal().copy_(original).add_(frac * mean_diag)
        torch.linalg.cholesky_ex(S, out=(S, info))  # L, lower
        if info == 0:
            if fast:
                _invert_lower_(S)  # L⁻¹
                _rotate_180_(S.mT)  # J L⁻¹ J: upper
                return S, frac
            torch.cholesky_inverse(S, out=S)  # (H' + λI)⁻¹
            torch.linalg.cholesky_ex(S, upper=True, out=(S, info))
            if info == 0:
                return S, frac
        warn(f"GPTQ: Hessian not positive definite at dampening {frac:g}; retrying with {frac * 10:g}")
        frac *= 10
    raise RuntimeError(f"GPTQ: Hessian ({cols}x{cols}) not positive definite even at dampening {frac:g}")


def _invert_lower_(S: torch.Tensor) -> None:
    """S [n, n] column-major float32, lower-triangular in its lower part -> L⁻¹ in place, zeros above.
    LAPACK's strtri through SciPy: torch has no triangular inverse that skips the identity's zeros
    (solve_triangular against I costs 3x as much)."""
    import numpy as np
    from scipy.linalg import lapack

    a = S.numpy()  # a Fortran-ordered view of the same memory
    inv, info = lapack.strtri(a, lower=1, overwrite_c=1)
    if info != 0:  # cannot happen after a successful Cholesky (its diagonal is positive)
        raise RuntimeError(f"GPTQ: triangular inverse failed (LAPACK info {info})")
    if not np.shares_memory(inv, a):
        S.copy_(torch.from_numpy(inv))
    S.tril_()  # the upper part still held H'


def _rotate_180_(T: torch.Tensor, chunk: int = 512) -> None:
    """T[i, j] <- T[n-1-i, n-1-j] in place, [chunk, n] rows at a time (no second [n, n] matrix)."""
    n = T.shape[0]
    for a in range(0, n // 2, chunk):
        b = min(a + chunk, n // 2)
        top = T[a:b].flip(0, 1)  # a copy, [b - a, n]
        T[a:b] = T[n - b : n - a].flip(0, 1)
        T[n - b : n - a] = top
    if n % 2:  # the middle row reverses onto itself
        T[n // 2] = T[n // 2].flip(0)


def _fill_visiting_order(S: torch.Tensor, H: torch.Tensor, perm: torch.Tensor | None, chunk: int = 1024) -> None:
    """S[a, b] = H[perm[a], perm[b]] (or S = H), gathered [chunk, cols] at a time."""
    if perm is None:
        S.copy_(H)
        return
    for a in range(0, S.shape[0], chunk):
        S[a : a + chunk] = H.index_select(0, perm[a : a + chunk]).index_select(1, perm)


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    args: QuantArgs,
    dampening_frac: float = 0.1,
    scale_dtype: torch.dtype = torch.bfloat16,
    block_size: int = BLOCK_SIZE,
    warn=print,
) -> GPTQResult:
    """W [rows, cols] (any float dtype), H [cols, cols] float32 -> quantized W."""
    W = W.detach().to(torch.float32, copy=True)
    H_in = H.detach().float()  # never modified: gate/up share one H
    rows, cols = W.shape
    group = args.group_size if args.strategy == "group" else None
    if group:
        # keep every group inside one block so its scale sees the in-block updates
        block_size = group * max(1, block_size // group) if group <= block_size else group

    importance = torch.diag(H_in).clone()
    dead = importance == 0  # inputs that were always zero: their weights cannot matter
    importance[dead] = 1.0
    W[:, dead] = 0.0

    static = args.actorder is not None or not group
    if static:  # scales from the original weight, fixed before any update
        scale, zp = observe(W, args, scale_dtype, importance)
    else:  # filled group by group as GPTQ reaches each group
        scale = torch.empty(rows, cols // group, dtype=scale_dtype, device=W.device)
        zp = None if args.symmetric else torch.empty(rows, cols // group, dtype=torch.int8, device=W.device)
    perm = torch.argsort(importance, descending=True) if args.actorder is not None else None
    if perm is not None:  # W in the visiting order, permuted in place a few rows at a time
        for r in range(0, rows, 256):
            W[r : r + 256] = W[r : r + 256, perm]
        dead = dead[perm]
    # the one [cols, cols] matrix this function makes: H's caller keeps H, so two at the peak
    U, used_frac = inverse_cholesky(H_in, dampening_frac, warn, perm, dead)

    # each column's scale / zero-point: looked up by group index (no [rows, cols] tables)
    gidx = torch.arange(cols) // group if group else torch.zeros(cols, dtype=torch.long)
    gidx = (gidx[perm.cpu()] if perm is not None else gidx).tolist()
    scale_f = scale.float() if static else None
    zp_f = zp.float() if static and zp is not None else None
    qmin, qmax, is_float = args.qmin, args.qmax, args.type == "float"
    round_scale = scale_dtype != torch.float32
    Q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn if is_float else torch.int8, device=W.device)  # the codes
    losses = torch.zeros((), device=W.device)

    # Columns are visited as rows of the block's transpose W1 [b, rows], so each one GPTQ reads,
    # rounds and updates is contiguous; a column's error reaches the rest of its sub-block by rank-1
    # updates, the rest of its block after each sub-block and the rest of W after each block, all
    # by matmuls (the lazy batch updates of GPTQ §4, nested once more). The same algorithm as one
    # column at a time; at an 8B model's gate_proj 5.1 s -> 1.7 s on 2 cores.
    sub = math.gcd(SUB_BLOCK, group) if group else SUB_BLOCK  # a group starts on a sub-block edge
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].T.contiguous()  # [b, rows]
        Err1 = torch.empty_like(W1)
        Q1 = torch.empty(i2 - i1, rows, dtype=Q.dtype, device=W.device)
        U1 = U[i1:i2, i1:i2]
        for j1 in range(0, i2 - i1, sub):
            j2 = min(j1 + sub, i2 - i1)
            for i in range(j1, j2):
                c = i1 + i
                if not static and c % group == 0:  # error-compensated group scale
                    s, z = observe(W1[i : i + group].T, _one_group(args), scale_dtype, importance[c : c + group])
                    scale[:, c // group] = s[:, 0]
                    if zp is not None:
                        zp[:, c // group] = z[:, 0]
                g = gidx[c]
                s = scale_f[:, g] if static else scale[:, g].float()
                z = 0.0 if zp is None else (zp_f[:, g] if static else zp[:, g].float())
                w = W1[i]
                if is_float:
                    q8 = (w / s).clamp_(qmin, qmax).to(torch.float8_e4m3fn)
                    Q1[i] = q8
                    q = q8.float()
                else:
                    q = torch.round(w / s + z).clamp_(qmin, qmax)
                    Q1[i] = q
                dq = (q - z) * s
                if round_scale:  # the reader dequantizes in the scale's dtype
                    dq = dq.to(scale_dtype).float()
                err = (w - dq) / U1[i, i]
                W1[i:j2].addr_(U1[i, i:j2], err, alpha=-1.0)
                Err1[i] = err
            W1[j2:].addmm_(U1[j1:j2, j2:].T, Err1[j1:j2], alpha=-1.0)
        losses += (Err1**2).sum() / 2
        Q[:, i1:i2] = Q1.T
        W[:, i2:].addmm_(Err1.T, U[i1:i2, i2:], alpha=-1.0)

    q = Q
    if perm is not None:  # back to the checkpoint's column order (through bytes: fp8 has no index kernels)
        q = Q.view(torch.uint8)[:, torch.argsort(perm)].view(Q.dtype)
    return GPTQResult(q, scale, zp, float(losses), used_frac)


def asymmetric_target(W: torch.Tensor, H: torch.Tensor, D: torch.Tensor, dampening_frac: float) -> torch.Tensor:
    """The weight [rows, cols] that GPTQ should round when the layer's inputs x have drifted from the float
    model's x_fp through the quantization of the layers before it (GPTAQ's "asymmetric calibration", Li et
    al. 2025): argmin_W' Σ ||W' x - W x_fp||² = W (Σ x_fp xᵀ)(Σ x xᵀ)⁻¹, written W + W D (H + λI)⁻¹ with
    H = 2/n Σ x xᵀ, D = 2/n Σ (x_fp - x) xᵀ [cols, cols] and λ = dampening_frac · mean(diag H), so that
    undrifted inputs (D = 0) leave W as it is. Because that least-squares residual is orthogonal to x,
    GPTQ of W' under H then minimises ||Q x - W x_fp||²: the error of the layers before is corrected here
    instead of carried on."""
    A = H.detach().float().clone()
    A.diagonal().add_(dampening_frac * A.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(A)
    if info:  # not positive definite at this damping: GPTQ's own retry will say so; aim at W itself
        return W
    W32 = W.detach().float()
    # W D (H + λI)⁻¹ = ((H + λI)⁻¹ Dᵀ Wᵀ)ᵀ, H symmetric: one Cholesky solve
    step = torch.cholesky_solve((W32 @ D.float()).T.contiguous(), L).T
    return (W32 + step).to(W.dtype)


def _one_group(args: QuantArgs) -> QuantArgs:
    """The args to observe a single [rows, group] slice: one scale per row."""
    return replace(args, strategy="channel", group_size=None)


def rtn_quantize(W: torch.Tensor, args: QuantArgs, scale_dtype: torch.dtype = torch.bfloat16,
                 H: torch.Tensor | None = None) -> GPTQResult:
    """Round-to-nearest with the scheme's observer: the baseline GPTQ must beat, and
    the whole algorithm for FP8-dynamic weights. With the input's Hessian H [cols, cols] (after AWQ),
    the MSE observer's range search is scored on the output (observers.output_mse_qparams)."""
    if H is not None and args.observer == "mse" and args.strategy == "group":
        scale, zp = output_mse_qparams(W, args, H, scale_dtype)
    else:
        scale, zp = observe(W, args, scale_dtype)
    return GPTQResult(quantize(W, scale, zp, args), scale, zp, math.nan, 0.0)
