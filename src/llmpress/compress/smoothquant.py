"""SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models"), as pure tensor functions.

Activation outliers live in a few input channels. For a Linear y = x Wᵀ we can
divide channel j of x by s_j and multiply column j of W by s_j without changing
y; the division is folded into whatever produced x (an RMSNorm's weight, or the
rows of v_proj feeding o_proj, or of up_proj feeding down_proj), so it costs nothing
at run time:
    s_j = max|X_j|^α / max|W_:,j|^(1-α)
Because the fold is exact, a Hessian H = Σ x xᵀ collected before smoothing is
moved to the smoothed inputs analytically, H' = H / (s sᵀ), instead of
re-running calibration.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from ..quant import QuantArgs, fake_quantize
from .observers import minmax_qparams

SEARCH_ALPHAS = tuple(i / 10 for i in range(9))  # 0 (no smoothing) .. 0.8


def smoothing_scales(
    act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float = 0.8, eps: float = 1e-5
) -> torch.Tensor:
    """act_max [C] (max |x| per input channel), weights: Linears [out_i, C] that read x.
    Returns s [C] float32."""
    w_max = torch.cat([w.detach().float().abs() for w in weights], dim=0).amax(0).clamp(min=eps)
    a = act_max.float().clamp(min=eps)
    s = a.pow(alpha) / w_max.pow(1 - alpha)
    return s.clamp(min=eps)


def fold_into_norm(
    norm_weight: torch.Tensor, linears: list[torch.Tensor], s: torch.Tensor, offset: float = 0.0
) -> None:
    """In place: norm output channel j is divided by s_j, the readers' column j times s_j.
    The norm multiplies by (offset + w): 0 for Llama's RMSNorm, 1 for Gemma's x·(1 + w)."""
    norm_weight.data.copy_(((norm_weight.float() + offset) / s - offset).to(norm_weight.dtype))
    for w in linears:
        w.data.copy_((w.float() * s).to(w.dtype))


def head_expand(s_kv: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Scales per v_proj output channel [kv*d] -> per o_proj input channel [heads*d]:
    with grouped-query attention, query head h reads kv head h // (heads/kv)."""
    d = s_kv.numel() // num_kv_heads
    rep = num_heads // num_kv_heads
    return s_kv.view(num_kv_heads, 1, d).expand(num_kv_heads, rep, d).reshape(num_heads * d)


def head_reduce_max(x: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Per o_proj input channel [heads*d] -> per kv channel [kv*d], max over the query heads
    that share a kv head (one v channel scale must serve all of them)."""
    d = x.numel() // num_heads
    return x.view(num_kv_heads, num_heads // num_kv_heads, d).amax(1).reshape(-1)


def vo_smoothing_scales(
    o_act_max: torch.Tensor, o_weight: torch.Tensor, num_heads: int, num_kv_heads: int, alpha: float = 0.8
) -> torch.Tensor:
    """Scales [kv*d] for the v_proj -> o_proj pair (attention is linear in v per head)."""
    a = head_reduce_max(o_act_max.float(), num_heads, num_kv_heads)
    w = head_reduce_max(o_weight.detach().float().abs().amax(0), num_heads, num_kv_heads)
    eps = 1e-5
    return (a.clamp(min=eps).pow(alpha) / w.clamp(min=eps).pow(1 - alpha)).clamp(min=eps)


def fold_into_v(
    v_weight: torch.Tensor,
    v_bias: torch.Tensor | None,
    o_weight: torch.Tensor,
    s_kv: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
) -> torch.Tensor:
    """In place: v_proj output rows divided by s, o_proj columns multiplied by the expanded s.
    Returns the expanded scales [heads*d] (for moving o_proj's Hessian)."""
    v_weight.data.copy_((v_weight.float() / s_kv[:, None]).to(v_weight.dtype))
    if v_bias is not None:
        v_bias.data.copy_((v_bias.float() / s_kv).to(v_bias.dtype))
    s_o = head_expand(s_kv, num_heads, num_kv_heads)
    o_weight.data.copy_((o_weight.float() * s_o).to(o_weight.dtype))
    return s_o


def fold_into_up(up_weight: torch.Tensor, down_weight: torch.Tensor, s: torch.Tensor) -> None:
    """In place: up_proj output rows divided by s, down_proj columns multiplied by s. A gated MLP's
    down_proj reads m = act(gate(x)) · up(x), linear in up's output, so m becomes m / s exactly; up_proj's
    rows are rescaled whole, which its per-channel weight scales absorb."""
    up_weight.data.copy_((up_weight.float() / s[:, None]).to(up_weight.dtype))
    down_weight.data.copy_((down_weight.float() * s).to(down_weight.dtype))


@torch.no_grad()
def search_smoothing(
    x: torch.Tensor, weight: torch.Tensor, act_max: torch.Tensor, weight_args: QuantArgs,
    act_quant: Callable[[torch.Tensor], torch.Tensor], alphas: tuple[float, ...] = SEARCH_ALPHAS,
) -> tuple[torch.Tensor, float, list[float]]:
    """The α whose scales s minimise the Linear's output error with both operands quantized,
    ||act_quant(x / s) · Q(W s)ᵀ - x Wᵀ||², on sample rows x [tokens, C] of its input (W [out, C], Q the
    weights' round-to-nearest with min-max ranges). AWQ's grid search (Lin et al. 2024) applied to
    SmoothQuant's α: the best strength differs from layer to layer and model to model, and one too high
    ruins a layer (α 0.65 on the default model's down_proj costs more KL than no smoothing).
    α = 0 is a candidate, so a layer is never smoothed for the worse on this measure.
    Returns (s [C] float32, α, the error of each α)."""
    x32, w32 = x.float(), weight.detach().float()
    ref = x32 @ w32.T  # [tokens, out]
    # each row's error relative to its own output: a few "massive activation" tokens (the first of a
    # sequence) carry outputs 100x the rest, and an absolute sum would choose α for them alone
    norms = (ref**2).sum(-1).clamp(min=1e-12)
    args = replace(weight_args, observer="minmax")
    errors = []
    for a in alphas:
        s = smoothing_scales(act_max, [w32], a) if a else torch.ones_like(act_max, dtype=torch.float32)
        ws = w32 * s
        scale, zp = minmax_qparams(ws, args, torch.float32)
        out = act_quant(x32 / s) @ fake_quantize(ws, scale, zp, args).T
        errors.append((((out - ref) ** 2).sum(-1) / norms).sum().item())
    best = min(range(len(alphas)), key=errors.__getitem__)
    a = alphas[best]
    s = smoothing_scales(act_max, [w32], a) if a else torch.ones_like(act_max, dtype=torch.float32)
    return s, a, errors


def move_hessian(H: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Hessian of inputs x, to the Hessian of the smoothed inputs x / s."""
    inv = 1.0 / s.float()
    return H * inv[:, None] * inv[None, :]


@torch.no_grad()
def norm_weight_offset(norm: torch.nn.Module) -> float | None:
    """c such that norm(x) = n(x) · (c + w) for every weight w (0: x·w, 1: Gemma's x·(1 + w)),
    found by probing the module at w = 0 and w = 1; None when the output does not scale that way
    (a bias, a weight applied before normalizing), so a SmoothQuant fold would not be exact."""
    w = norm.weight
    if w is None or w.ndim != 1 or getattr(norm, "bias", None) is not None:
        return None
    x = torch.randn(4, w.numel(), generator=torch.Generator().manual_seed(0)).to(w.device, torch.float32)
    saved = w.data
    try:
        outs = []
        for value in (0.0, 1.0, 0.5):
            w.data = torch.full_like(saved, value, dtype=torch.float32)
            outs.append(norm(x).float())
    finally:
        w.data = saved
    n = outs[1] - outs[0]  # n(x)
    if not torch.isfinite(n).all() or n.abs().max() == 0:
        return None
    c = (outs[0] * n).sum().item() / (n * n).sum().item()
    return c if torch.allclose(outs[2], n * (c + 0.5), rtol=1e-4, atol=1e-5) and abs(c - round(c)) < 1e-4 else None
