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

from .observers import expand, observe, quantize
from .schemes import QuantArgs

BLOCK_SIZE = 128


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
        for chunk in x.split(512) if x.dtype == torch.bfloat16 else (x,):
            self.sum += self._upper_product(chunk)

    OUTLIER_FACTOR = 8.0  # a channel whose max |x| is 8x the median channel's is recomputed exactly

    def _upper_product(self, x: torch.Tensor) -> torch.Tensor:
        if self.cols < 512:
            P = (x.T @ x).float()
        else:
            P = torch.zeros(self.cols, self.cols, device=x.device)
            b = -(-self.cols // self.BLOCKS)
            for i in range(0, self.cols, b):
                xi = x[:, i : i + b].T
                for j in range(i, self.cols, b):
                    P[i : i + b, j : j + b] = xi @ x[:, j : j + b]
        if x.dtype == torch.bfloat16:
            amax = x.abs().amax(0).float()
            big = torch.nonzero(amax > self.OUTLIER_FACTOR * amax.median()).flatten()[:64]
            if big.numel():
                exact = x.float().T @ x[:, big].float()  # [cols, k]
                P[:, big] = exact
                P[big, :] = exact.T
        return P

    def hessian(self) -> torch.Tensor:
        H = self.sum
        if self.cols >= 512:  # mirror the upper block triangle
            H = torch.triu(H) + torch.triu(H, 1).T
        return H * (2.0 / max(self.n, 1))


def inverse_cholesky(H: torch.Tensor, dampening_frac: float, warn=print) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = frac·mean(diag H). When H is not
    positive definite at that damping, retry with 10x more and say so."""
    cols = H.shape[0]
    mean_diag = torch.mean(torch.diag(H)).item()
    frac = dampening_frac
    for _ in range(6):
        Hd = H.clone()
        Hd.diagonal().add_(frac * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info == 0:
                return U, frac
        warn(f"GPTQ: Hessian not positive definite at dampening {frac:g}; retrying with {frac * 10:g}")
        frac *= 10
    raise RuntimeError(f"GPTQ: Hessian ({cols}x{cols}) not positive definite even at dampening {frac:g}")


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
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    rows, cols = W.shape
    group = args.group_size if args.strategy == "group" else None
    if group:
        # keep every group inside one block so its scale sees the in-block updates
        block_size = group * max(1, block_size // group) if group <= block_size else group

    dead = torch.diag(H) == 0  # inputs that were always zero: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    importance = torch.diag(H).clone()

    static = args.actorder is not None or not group
    if static:  # scales from the original weight, fixed before any update
        scale, zp = observe(W, args, scale_dtype, importance)
    else:  # filled group by group as GPTQ reaches each group
        scale = torch.empty(rows, cols // group, dtype=scale_dtype)
        zp = None if args.symmetric else torch.empty(rows, cols // group, dtype=torch.int8)
    perm = torch.argsort(torch.diag(H), descending=True) if args.actorder is not None else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    U, used_frac = inverse_cholesky(H, dampening_frac, warn)

    # per-column scale / zero-point in the (permuted) column order
    S = torch.empty(rows, cols)
    Z = torch.zeros(rows, cols)
    if static:
        S.copy_(expand(scale.float(), cols))
        if zp is not None:
            Z.copy_(expand(zp.float(), cols))
        if perm is not None:
            S, Z = S[:, perm], Z[:, perm]
    qmin, qmax, is_float = args.qmin, args.qmax, args.type == "float"
    round_scale = scale_dtype != torch.float32
    Q = torch.empty(rows, cols)  # integer (or fp8) codes, as float
    losses = torch.zeros(())

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.empty_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if not static and c % group == 0:  # error-compensated group scale
                s, z = observe(W1[:, i : i + group], _one_group(args), scale_dtype, importance[c : c + group])
                scale[:, c // group] = s[:, 0]
                S[:, c : c + group] = s.float()
                if zp is not None:
                    zp[:, c // group] = z[:, 0]
                    Z[:, c : c + group] = z.float()
            w, s, z = W1[:, i], S[:, c], Z[:, c]
            if is_float:
                q = (w / s).clamp_(qmin, qmax).to(torch.float8_e4m3fn).float()
            else:
                q = torch.round(w / s + z).clamp_(qmin, qmax)
            dq = (q - z) * s
            if round_scale:  # the reader dequantizes in the scale's dtype
                dq = dq.to(scale_dtype).float()
            Q[:, c] = q
            err = (w - dq) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            Err1[:, i] = err
        losses += (Err1**2).sum() / 2
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    q = Q.to(torch.float8_e4m3fn) if is_float else Q.to(torch.int8)
    return GPTQResult(q, scale, zp, float(losses), used_frac)


def _one_group(args: QuantArgs) -> QuantArgs:
    """The args to observe a single [rows, group] slice: one scale per row."""
    return replace(args, strategy="channel", group_size=None)


def rtn_quantize(W: torch.Tensor, args: QuantArgs, scale_dtype: torch.dtype = torch.bfloat16) -> GPTQResult:
    """Round-to-nearest with the scheme's observer: the baseline GPTQ must beat, and
    the whole algorithm for FP8-dynamic weights."""
    scale, zp = observe(W, args, scale_dtype)
    return GPTQResult(quantize(W, scale, zp, args), scale, zp, math.nan, 0.0)
