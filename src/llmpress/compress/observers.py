"""Observers: the scale / zero-point a weight is quantized with (min-max, or GPTQ's MSE range search).

Pure tensor functions. A weight is W [rows=out_features, cols=in_features];
qparams come out as scale [rows, G] (G = cols/group_size for "group", 1 for
"channel"; [1, 1] for "tensor"), zero_point likewise or None when symmetric.

Conventions follow compressed-tensors so that what we write decompresses to
exactly what we computed:
  int, symmetric:   scale = amax / ((qmax - qmin) / 2),  q = clamp(round(x/s), qmin, qmax)
  int, asymmetric:  scale = (max - min) / (qmax - qmin), zp = clamp(round(qmin - min/s))
  float (e4m3):     scale = amax / 448,                  q = clamp(x/s, ±448) -> float8_e4m3fn
The quantize / dequantize arithmetic itself lives in llmpress.quant.qdq. Scales are rounded to their storage dtype *before* quantizing, so the stored
scale is the one the integers were computed against.
"""
from __future__ import annotations

import torch

from ..quant import FP8_DTYPE, QuantArgs


def num_groups(cols: int, args: QuantArgs) -> int:
    if args.strategy == "group":
        assert args.group_size and cols % args.group_size == 0, (cols, args.group_size)
        return cols // args.group_size
    return 1


def _grouped(w: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """[rows, cols] -> [rows, G, cols/G] (tensor strategy: [1, 1, rows*cols])."""
    if args.strategy == "tensor":
        return w.reshape(1, 1, -1)
    return w.reshape(w.shape[0], num_groups(w.shape[1], args), -1)


def qparams_from_range(
    xmin: torch.Tensor, xmax: torch.Tensor, args: QuantArgs, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (and zero-point) for ranges [xmin, xmax] of any shape."""
    xmin = torch.clamp(xmin, max=0.0)
    xmax = torch.clamp(xmax, min=0.0)
    tiny = torch.finfo(scale_dtype).tiny * 16  # never a zero scale, even for an all-zero group
    if args.symmetric:
        amax = torch.maximum(-xmin, xmax)
        scale = amax / ((args.qmax - args.qmin) / 2) if args.type == "int" else amax / args.qmax
        scale = scale.clamp(min=tiny).to(scale_dtype)
        return scale, None
    scale = ((xmax - xmin) / (args.qmax - args.qmin)).clamp(min=tiny).to(scale_dtype)
    zp = torch.round(args.qmin - xmin / scale.float()).clamp(args.qmin, args.qmax)
    return scale, zp.to(torch.int8)


def minmax_qparams(
    w: torch.Tensor, args: QuantArgs, scale_dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = _grouped(w.float(), args)
    return qparams_from_range(g.amin(-1), g.amax(-1), args, scale_dtype)


def mse_qparams(
    w: torch.Tensor,
    args: QuantArgs,
    scale_dtype: torch.dtype = torch.bfloat16,
    importance: torch.Tensor | None = None,
    grid: int = 100,
    maxshrink: float = 0.8,
    norm: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shrink the min/max range by p in [1-maxshrink, 1] and keep, per group, the p with
    the least sum |x - dq(q(x))|^norm (GPTQ's reference search, Frantar et al. 2022).

    Coarse to fine: every 4th grid point first, then the 3 grid points either side of
    each group's best; 26 evaluations instead of 80, same 1/grid resolution.
    `importance` [cols] weights each column's error; GPTQ passes diag(H), the input
    energy that column's error is multiplied by at the layer output.

    Rows are searched in chunks of about MSE_CHUNK_ELEMENTS with one reused buffer, so
    the 26 evaluations run in cache instead of allocating a [rows, cols] temporary per
    operation (6x faster on a 5632 x 2048 weight); groups are independent, so the
    result is the same as one pass over the whole tensor.
    """
    g = _grouped(w.float(), args)  # [R, G, S]
    imp = None
    if importance is not None and args.strategy != "tensor":
        imp = _grouped(importance.float().expand(w.shape[0], -1), args)

    def error(d, r):  # d = dq(q(g)) - g [rows, G, S] for the rows from r -> [rows, G]
        d = d.abs_().pow_(norm)
        return (d if imp is None else d.mul_(imp[r : r + d.shape[0]])).sum(-1)

    return _chunked_search(g, error, args, scale_dtype, grid, maxshrink)


def output_mse_qparams(
    w: torch.Tensor,
    args: QuantArgs,
    H: torch.Tensor,
    scale_dtype: torch.dtype = torch.bfloat16,
    grid: int = 100,
    maxshrink: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The range search of mse_qparams scored on the Linear's output instead of its weights: per
    group g, the shrink with the least Δw_g H_gg Δw_gᵀ, the squared error that group adds to the
    output over the calibration tokens (H [cols, cols] = 2/n Σ x xᵀ; H_gg its diagonal block for
    the group's columns; the cross-group terms are left out, as each group has its own range).
    This is AWQ's clip search (Lin et al. 2023, arXiv 2306.00978, the reference code's auto_clip),
    exact over every token through H rather than over a sample of them. After AWQ's scaling it
    matters: the group maximum is then the salient column AWQ scaled up, which a plain MSE range
    search clips (its error counts each column alike) and this one does not (its column carries
    the large H_jj). Groups only: a channel-wise range would need all of H per row."""
    if args.strategy != "group":
        raise ValueError(f"output_mse_qparams needs group quantization, got strategy {args.strategy!r}")
    g = _grouped(w.float(), args)  # [R, G, S]
    G, S = g.shape[1], g.shape[2]
    idx = torch.arange(G, device=H.device)
    blocks = H.float().reshape(G, S, G, S)[idx, :, idx, :]  # [G, S, S]: H_gg

    def error(d, _r):  # d [rows, G, S] -> Σ_st d_gs H_g,st d_gt: [rows, G]
        dt = d.transpose(0, 1)  # [G, rows, S]
        return (torch.bmm(dt, blocks) * dt).sum(-1).T

    return _chunked_search(g, error, args, scale_dtype, grid, maxshrink)


MSE_CHUNK_ELEMENTS = 1 << 16  # 256 KiB of float32 per buffer: a core's L2 holds the search


def _chunked_search(g, error, args: QuantArgs, scale_dtype, grid: int, maxshrink: float):
    """The range search over g [R, G, S] in chunks of rows of about MSE_CHUNK_ELEMENTS, with one reused
    buffer, so its evaluations run in cache instead of allocating an [R, G, S] temporary per operation
    (6x faster on a 5632 x 2048 weight); groups are independent, so the result is one pass's."""
    rows = max(1, MSE_CHUNK_ELEMENTS // g[0].numel())
    parts = [_range_search(g[r : r + rows], lambda d, r=r: error(d, r), args, scale_dtype, grid, maxshrink)
             for r in range(0, g.shape[0], rows)]
    scale = torch.cat([s for s, _ in parts])
    return scale, None if args.symmetric else torch.cat([z for _, z in parts])


def _range_search(g, error, args: QuantArgs, scale_dtype, grid: int, maxshrink: float):
    """Per group of g [R, G, S], the range shrink p in [1 - maxshrink, 1] with the least error(dq - g)
    [R, G]; its (scale, zero point)."""
    xmin, xmax = g.amin(-1), g.amax(-1)
    lowest = 1.0 - maxshrink
    best_err = torch.full(xmin.shape, float("inf"), device=g.device)
    best_p = torch.ones(xmin.shape, device=g.device)
    best = qparams_from_range(xmin, xmax, args, scale_dtype)
    buf = torch.empty_like(g)

    def consider(p):
        nonlocal best_err, best_p, best
        scale, zp = qparams_from_range(p * xmin, p * xmax, args, scale_dtype)
        err = error(_fake_quantize_grouped(g, scale, zp, args, out=buf).sub_(g))
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_p = torch.where(better, p if torch.is_tensor(p) else torch.full_like(best_p, p), best_p)
        best = (torch.where(better, scale, best[0]), None if zp is None else torch.where(better, zp, best[1]))

    for i in range(0, int(maxshrink * grid) + 1, 4):
        consider(1.0 - i / grid)
    centre = best_p.clone()
    for k in (-3, -2, -1, 1, 2, 3):
        consider((centre + k / grid).clamp(lowest, 1.0))
    return best


def observe(
    w: torch.Tensor,
    args: QuantArgs,
    scale_dtype: torch.dtype = torch.bfloat16,
    importance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The scheme's observer: "mse" searches, "minmax" does not."""
    if args.observer == "mse":
        return mse_qparams(w, args, scale_dtype, importance)
    return minmax_qparams(w, args, scale_dtype)


def _fake_quantize_grouped(
    g: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, args: QuantArgs, out: torch.Tensor | None = None
) -> torch.Tensor:
    """dq(q(g)) for g [R, G, S], written into `out` when given (the same arithmetic either way)."""
    s = scale.float().unsqueeze(-1)
    out = torch.div(g, s, out=out) if out is not None else g / s
    if args.type == "float":
        out.copy_(out.clamp_(args.qmin, args.qmax).to(FP8_DTYPE))
        return out.mul_(s)
    if zp is None:
        return out.round_().clamp_(args.qmin, args.qmax).mul_(s)
    z = zp.float().unsqueeze(-1)
    return out.add_(z).round_().clamp_(args.qmin, args.qmax).sub_(z).mul_(s)




