"""Quantize, dequantize and fake-quantize a tensor with given qparams: the arithmetic that
compressed-tensors (and vLLM's kernels) define, shared by the compressor, the checkpoint
reader and the engine's reference paths.

A weight is W [rows=out_features, cols=in_features]; scale / zero-point are [rows, G]
(G = cols / group_size for "group", 1 for "channel"; [1, 1] for "tensor").
  int:          q = clamp(round(x / s + zp), qmin, qmax)     (zp = 0 when symmetric)
  float (e4m3): q = clamp(x / s, +-448) -> float8_e4m3fn
  dequantize:   (q.to(scale.dtype) - zp) * scale, computed in the scale's dtype.
"""
from __future__ import annotations

import torch

from .args import FP8_DTYPE, QuantArgs


def expand(p: torch.Tensor, cols: int) -> torch.Tensor:
    """Per-group params [R, G] -> per-element [R, cols] (channel/tensor broadcast as is)."""
    if p.shape[-1] in (1, cols):
        return p
    return p.repeat_interleave(cols // p.shape[-1], dim=-1)


def quantize(
    w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, args: QuantArgs
) -> torch.Tensor:
    """W [R, C] -> int8 (int schemes) or float8_e4m3fn (float schemes), same shape."""
    s = expand(scale, w.shape[1]).float()
    if args.type == "float":
        return (w.float() / s).clamp(args.qmin, args.qmax).to(FP8_DTYPE)
    z = 0.0 if zp is None else expand(zp, w.shape[1]).float()
    return torch.round(w.float() / s + z).clamp(args.qmin, args.qmax).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    """The compressed-tensors formula, in the scale's dtype: (q - zp) * scale."""
    s = expand(scale, q.shape[1])
    x = q.to(s.dtype)
    if zp is not None:
        x = x - expand(zp, q.shape[1]).to(s.dtype)
    return x * s


def fake_quantize(
    w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, args: QuantArgs
) -> torch.Tensor:
    return dequantize(quantize(w, scale, zp, args), scale, zp)


def dynamic_per_token(x: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """Fake-quantize activations x [..., C] with one scale per token (row), as vLLM does at
    run time for W8A8 / FP8-dynamic. Scales are kept in float32 here."""
    amax = x.abs().amax(-1, keepdim=True).float()
    if args.type == "float":
        s = (amax / args.qmax).clamp(min=1e-12)
        return ((x.float() / s).clamp(args.qmin, args.qmax).to(FP8_DTYPE).float() * s).to(x.dtype)
    s = (amax / args.qmax).clamp(min=1e-12)  # vLLM's dynamic int8: amax / 127
    return (torch.round(x.float() / s).clamp(args.qmin, args.qmax) * s).to(x.dtype)
