"""SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models"), as pure tensor functions.

Activation outliers live in a few input channels. For a Linear y = x Wᵀ we can
divide channel j of x by s_j and multiply column j of W by s_j without changing
y; the division is folded into whatever produced x (an RMSNorm's weight, or the
rows of v_proj feeding o_proj), so it costs nothing at run time:
    s_j = max|X_j|^α / max|W_:,j|^(1-α)
Because the fold is exact, a Hessian H = Σ x xᵀ collected before smoothing is
moved to the smoothed inputs analytically, H' = H / (s sᵀ), instead of
re-running calibration.
"""
from __future__ import annotations

import torch


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
