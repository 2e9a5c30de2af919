"""AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration", arXiv 2306.00978), as pure tensor functions.

A few input channels of a Linear carry much larger activations than the rest; their weights
matter most, and a group quantizer that shares one scale across 64-128 columns rounds them as
coarsely as the others. AWQ multiplies those columns by s_j > 1 before quantizing (so they use
more of the integer grid) and divides the input channel by s_j, folding the division into
whatever produced the input, exactly as SmoothQuant does (smoothquant.py):

    y = x Wᵀ = (x / s) (W · s)ᵀ  ->  quantize W · s, fold 1/s into the previous norm / Linear

The scales come from a grid search (§3.3 of the paper; llm-compressor's AWQModifier):

    s(r) = x̄^r                         (x̄: mean |x| per input channel over the calibration tokens)
    s(r) = x̄^r / w̄^(1-r)               ("duo" scaling, llm-compressor's default; w̄: mean of each
                                         weight's |w| / max |w| of its quantization group)
    s ← s / sqrt(max(s) · min(s)),      r ∈ {0, 1/20, ..., 19/20}

keeping the r whose fake-quantized Q(W·s)/s gives the least output error. The error of the
readers' outputs over all calibration tokens is a quadratic form in the weight error,

    Σ_tokens ||x ΔWᵀ||² = tr(ΔW (Σ x xᵀ) ΔWᵀ),   ΔW = W - Q(W·s)/s   [out, C]

so with the inputs' Hessian H = 2/n Σ x xᵀ (the one GPTQ builds) each candidate costs one
[out, C] x [C, C] product instead of a forward over every token: exact over all tokens, not a
subsample. r = 0 gives s = 1 (plain round-to-nearest) when duo scaling is off, so the search
never does worse than round-to-nearest on that objective.

The grid rounds with min-max scales (the paper's and llm-compressor's choice). The round-to-nearest
after it clips as the paper's code does (auto_clip): each group's range shrink is scored on the
output error through H (observers.output_mse_qparams), not on the weights, whose MSE search would
clip exactly the columns AWQ scaled up. The best REFINE candidates and s = 1 are re-scored rounded
that way. W4A16 g64 on the default model: KL 0.308 -> 0.219 (benchmarks/README.md, "AWQ").

Tried and not kept (benchmarks/README.md, "AWQ"): llm-compressor's objective, the parent module's
output (whole attention / MLP) re-run per candidate on 4,096 tokens, chose worse scales end to end
than this exact all-token objective (KL 0.334 vs 0.308) at 1.6x the time; duo scaling's both forms
at every r gave no gain (0.310).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant import QuantArgs
from .observers import _fake_quantize_grouped, _grouped, output_mse_qparams, qparams_from_range
from .smoothquant import move_hessian

GRID = 20  # ratios r = 0, 1/20, ..., 19/20 (the paper's and llm-compressor's n_grid)
REFINE = 3  # with the MSE observer: the best min-max candidates re-scored with it (and s = 1)


@dataclass
class AwqResult:
    scales: torch.Tensor  # s [C] float32: the readers' columns are multiplied by it, their input divided
    ratio: float  # the chosen r
    loss: float  # tr(ΔW H ΔWᵀ) summed over the readers at the chosen s
    rtn_loss: float  # the same at s = 1 (plain round-to-nearest), for the log
    duo: bool  # whether s carries the weight term w̄^(r-1)


def weight_mean(weights: list[torch.Tensor], args: QuantArgs) -> torch.Tensor:
    """w̄ [C]: each weight's |w| relative to the largest |w| of its quantization group (a row's group
    of `group_size` columns, or the whole row per channel), averaged over every reader's rows."""
    W = torch.cat([w.detach().float() for w in weights], dim=0)  # [sum out, C]
    rows, cols = W.shape
    g = args.group_size if args.strategy == "group" and args.group_size else cols
    a = W.abs().reshape(rows, cols // g, g)
    return (a / (a.amax(-1, keepdim=True) + 1e-6)).reshape(rows, cols).mean(0)


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, ratio: float) -> torch.Tensor:
    """s(r) [C], normalized so that sqrt(max · min) = 1 (llm-compressor's normalization: the scales
    straddle 1, so neither the weights nor the folded norm drift far from their range)."""
    x = x_mean.float()
    if w_mean is None:
        s = x.pow(ratio).clamp(min=1e-4)
    else:
        s = (x.pow(ratio) / (w_mean.float().pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def scaled_quant_error(W: torch.Tensor, s: torch.Tensor, args: QuantArgs, H: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW = W - Q(W·s)/s [out, C] for W [out, C] float32, s [C]: the error the readers' outputs
    see once the input is divided by s. Min-max scales in float32 (the search compares candidates),
    the same arithmetic as quant.fake_quantize, on the [out, groups, group_size] view in place
    (the search runs it 21 times per Linear: no [out, C] scale tables). With H [C, C], the input's
    Hessian, the ranges come from the output-scored range search the final rounding uses
    (observers.output_mse_qparams, AWQ's clip) on the scaled input's Hessian H / (s sᵀ)."""
    Ws = W * s
    g = _grouped(Ws, args)  # [out, G, S]
    if H is not None:
        scale, zp = output_mse_qparams(Ws, args, move_hessian(H, s), torch.float32)
    else:
        scale, zp = qparams_from_range(g.amin(-1), g.amax(-1), args, torch.float32)
    dq = _fake_quantize_grouped(g, scale, zp, args, out=g).reshape(W.shape)
    return dq.div_(s).neg_().add_(W)


def output_error(W: torch.Tensor, s: torch.Tensor, H: torch.Tensor, args: QuantArgs, clip: bool = False) -> float:
    """tr(ΔW H ΔWᵀ) for one reader: its output's squared error summed over the calibration tokens
    (times the constant 2/n that H carries); clip: rounded with the output-scored ranges."""
    dW = scaled_quant_error(W, s, args, H if clip else None)
    return float(((dW @ H) * dW).sum())


@torch.no_grad()
def search_scales(
    x_mean: torch.Tensor,
    weights: list[torch.Tensor],
    H: torch.Tensor,
    args: QuantArgs,
    duo: bool | str = True,
    grid: int = GRID,
    rescore: bool = True,
) -> AwqResult:
    """The AWQ scale search for Linears that all read the same input.

    x_mean [C]: mean |x| per input channel; weights: the readers' [out_i, C]; H [C, C]: the input's
    Hessian 2/n Σ x xᵀ. duo: False (s = x̄^r), True (duo scaling, plus s = 1: llm-compressor's default
    candidates, so plain round-to-nearest is always among them) or "both" (both forms at every r).
    Ties keep the earlier candidate, so flat activations without duo give r = 0, s = 1. rescore: re-score
    the best with the scheme's MSE observer (when it has one) because round-to-nearest follows; GPTQ
    compensates rounding itself, and there the min-max choice measured better (benchmarks/README.md)."""
    if duo not in (False, True, "both"):
        raise ValueError(f"duo must be False, True or 'both', got {duo!r}")
    Ws = [w.detach().float() for w in weights]
    Hf = H.float()
    w_mean = weight_mean(Ws, args)
    ones = torch.ones_like(x_mean, dtype=torch.float32)
    rtn = sum(output_error(W, ones, Hf, args) for W in Ws)
    best = (rtn, 0.0, ones, False)  # s = 1 (r = 0 without duo scaling)
    tried = [best]
    forms = {False: (False,), True: (True,), "both": (False, True)}[duo]
    for use_w, i in ((u, i) for u in forms for i in range(grid)):
        if not use_w and i == 0:
            continue  # s = 1, evaluated above
        r = i / grid
        s = candidate_scales(x_mean, w_mean if use_w else None, r)
        loss = sum(output_error(W, s, Hf, args) for W in Ws)
        tried.append((loss, r, s, use_w))
        if loss < best[0]:
            best = (loss, r, s, use_w)
    if rescore and args.observer == "mse" and args.strategy == "group":
        # the grid rounds with min-max scales (cheap); the final rounding's range search (AWQ's clip)
        # rounds differently, so the best few and s = 1 are re-scored as they will be rounded
        best, rtn = _rescore(tried, x_mean, Ws, Hf, args)
    loss, r, s, use_w = best
    return AwqResult(s, r, loss, rtn, use_w)


def _rescore(tried, x_mean, Ws, Hf, args):
    """(the best of the REFINE best min-max candidates and s = 1 with the clip search, its s = 1 loss)."""
    top = sorted(tried, key=lambda c: c[0])[:REFINE]
    ones = torch.ones_like(x_mean, dtype=torch.float32)
    rtn = sum(output_error(W, ones, Hf, args, clip=True) for W in Ws)
    best = (rtn, 0.0, ones, False)
    for _, r, s, use_w in top:
        if r == 0.0 and not use_w:
            continue
        loss = sum(output_error(W, s, Hf, args, clip=True) for W in Ws)
        if loss < best[0]:
            best = (loss, r, s, use_w)
    return best, rtn


# ------------------------------------------------------------------------------ folds (exact; shapes in comments)

def fold_into_rows(prev_weight: torch.Tensor, prev_bias: torch.Tensor | None, readers: list[torch.Tensor],
                   s: torch.Tensor) -> None:
    """In place: the producing Linear's output rows [C, in] and bias [C] divided by s [C], the
    readers' columns [out_i, C] multiplied by s. Exact where the readers' input is that Linear's
    output times something per channel: up_proj -> down_proj (down reads act(gate(h)) · up(h)),
    and v_proj -> o_proj without grouped-query attention (attention mixes tokens, not channels)."""
    prev_weight.data.copy_((prev_weight.float() / s[:, None]).to(prev_weight.dtype))
    if prev_bias is not None:
        prev_bias.data.copy_((prev_bias.float() / s).to(prev_bias.dtype))
    for w in readers:
        w.data.copy_((w.float() * s).to(w.dtype))
