"""Mixed precision within an average-bits budget (`--budget BITS`), as pure tensor functions.

Each *unit* is a set of Linears that must share one precision: the Linears that read one input
(q/k/v; gate/up) are fused into one weight by the engine and by vLLM, and vLLM refuses a fused
layer whose shards have different schemes. Each unit gets one of four choices:

    w4       the recipe's int4 scheme (group g):   4 + 16/g bits per weight (+ 4/g asymmetric zero point)
    w4_half  the same at group g/2:                4 + 32/g  (a finer rung between w4 and w8, e.g. 4.25 -> 4.5)
    w8       int8 symmetric, one scale per row:    8 + 16/in_features
    16       left unquantized:                     the stored dtype's bits (16 for bf16 / fp16)

Costs are the bytes the checkpoint stores per weight, scales and zero points included (`bits_per_weight`),
so "average bits" is what `du` sees for those Linears, not a nominal 4 or 8.

Sensitivity of a unit at a choice: the output error of its Linears on the calibration data,
    e = Σ_linears tr(ΔW H ΔWᵀ),  ΔW = W - dequant(Q),  H = 2/n Σ x xᵀ (the GPTQ Hessian),
i.e. ||(W - Q) X||² · 2/n, the layer-wise objective GPTQ minimizes (Frantar et al. 2022, eq. 1) evaluated
for the weights GPTQ actually produced at that precision, rather than a proxy of the weights alone
(HAWQ-V2's tr(H)·||ΔW||²). It is a local measure: it does not model how an error propagates to the
logits, which is the price of measuring every unit with one calibration pass.

Allocation (`allocate`): a multiple-choice knapsack solved greedily, as in HAWQ-V3's / OWQ's budgeted
bit allocation: start with every unit at its cheapest choice, then repeatedly apply the upgrade (to any
dearer choice of one unit) with the largest error reduction per bit spent that still fits the budget,
until none fits. Taking any dearer choice (not only the next one) keeps the greedy correct when the
error curve is not convex (w4 -> 16 better per bit than w4 -> w8).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..quant import QuantArgs, Scheme

CHOICES = ("w4", "w4_half", "w8", "16")
SCALE_BITS = 16  # scales stored in the model's bf16 / fp16


def choice_schemes(base: Scheme) -> dict[str, Scheme | None]:
    """The choices for a W4A16 recipe scheme: itself; itself at half the group size (when the group is even and at
    least 16); int8 symmetric per channel with the same observer / act-order / algorithm, stored pack-quantized (one
    checkpoint format, several config groups; vLLM's WNA16 path reads num_bits 4 and 8); None (unquantized)."""
    out: dict[str, Scheme | None] = {"w4": base}
    g = base.weights.group_size
    if g and g % 2 == 0 and g >= 16:
        out["w4_half"] = replace(base, name=f"{base.name}:g{g // 2}", weights=replace(base.weights, group_size=g // 2))
    w8 = replace(base.weights, num_bits=8, symmetric=True, strategy="channel", group_size=None)
    out["w8"] = Scheme(f"{base.name}:W8", w8, None, base.uses_gptq, packed=True)
    out["16"] = None
    return out


def bits_per_weight(args: QuantArgs | None, cols: int, dense_bits: int = 16, scale_bits: int = SCALE_BITS) -> float:
    """Stored bits per weight of a [rows, cols] Linear under `args` (None: unquantized), scales included:
    codes + one scale per group (per row for "channel") + one zero point per group when asymmetric."""
    if args is None:
        return float(dense_bits)
    if args.strategy == "group":
        per_row = cols // args.group_size
    elif args.strategy == "channel":
        per_row = 1
    else:
        raise ValueError(f"budget: weight strategy {args.strategy!r} has no bits accounting here (group or channel)")
    zp = 0 if args.symmetric else args.num_bits
    return args.num_bits + per_row * (scale_bits + zp) / cols


def cheapest_bits(args: QuantArgs) -> float:
    """The smallest average a budget can ask for: every unit at the int4 scheme (shape-independent for groups)."""
    return args.num_bits + (SCALE_BITS + (0 if args.symmetric else args.num_bits)) / args.group_size


def output_error(W: torch.Tensor, W_q: torch.Tensor, H: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) with ΔW = W - W_q [rows, cols], H [cols, cols]: the calibration inputs' squared output
    error (times 2/n). Computed in float64 (the W8 errors are ~2^8 smaller than the W4 ones)."""
    dW = (W.double() - W_q.double())
    return float(((dW @ H.double()) * dW).sum())


def weight_by_fisher(units: list["Unit"], fisher: dict[str, float]) -> bool:
    """Scale each unit's errors by the mean output Fisher of its Linears (fisher.py): local error -> predicted KL
    contribution. False, changing nothing, when a unit's Linear has no Fisher value (every unit is measured on
    one scale or none is)."""
    if any(n not in fisher for u in units for n in u.names):
        return False
    for u in units:
        w = sum(fisher[n] for n in u.names) / len(u.names)
        u.error = {k: v * w for k, v in u.error.items()}
    return True


@dataclass
class Unit:
    """One precision decision: its Linears' names, weight count, and per choice (bits per weight, error)."""

    names: tuple[str, ...]
    numel: int
    bits: dict[str, float]
    error: dict[str, float] = field(default_factory=dict)


def allocate(units: list[Unit], budget: float) -> dict[tuple[str, ...], str]:
    """The choice per unit (keyed by its names) whose weighted average bits stay <= `budget`,
    greedily minimizing the summed error (see the module docstring). ValueError when even the
    cheapest choice of every unit exceeds the budget."""
    total = sum(u.numel for u in units)
    if not units or total == 0:
        return {}
    pick = {i: min(u.bits, key=lambda c: (u.bits[c], u.error.get(c, 0.0))) for i, u in enumerate(units)}
    spent = sum(u.numel * u.bits[pick[i]] for i, u in enumerate(units))
    allowed = budget * total + 1e-9 * total
    if spent > allowed:
        raise ValueError(f"budget {budget} bits is below the cheapest allocation ({spent / total:.4f} bits per weight)")
    while True:
        best = None  # (gain per bit, index, choice, cost)
        for i, u in enumerate(units):
            cur = pick[i]
            for c in u.bits:
                cost = u.numel * (u.bits[c] - u.bits[cur])
                gain = u.error[cur] - u.error[c]
                if cost <= 0 or gain <= 0 or spent + cost > allowed:
                    continue
                ratio = gain / cost
                if best is None or ratio > best[0]:
                    best = (ratio, i, c, cost)
        if best is None:
            break
        _, i, c, cost = best
        pick[i] = c
        spent += cost
    return {u.names: pick[i] for i, u in enumerate(units)}


def average_bits(units: list[Unit], choice: dict[tuple[str, ...], str]) -> float:
    """The weighted average bits per weight of an allocation."""
    total = sum(u.numel for u in units)
    return sum(u.numel * u.bits[choice[u.names]] for u in units) / max(total, 1)


def summary(units: list[Unit], choice: dict[tuple[str, ...], str]) -> dict:
    """Counts and weight shares per choice, the average bits, and each unit's choice (for llmpress_compress.json)."""
    total = sum(u.numel for u in units) or 1
    out = {"average_bits": round(average_bits(units, choice), 4), "choices": {}}
    for c in CHOICES:
        us = [u for u in units if choice[u.names] == c]
        if us:
            out["choices"][c] = {"units": len(us), "weight_share": round(sum(u.numel for u in us) / total, 4)}
    out["units"] = {"+".join(u.names): {"choice": choice[u.names],
                                        "error": {k: float(f"{v:.4g}") for k, v in u.error.items()}} for u in units}
    return out
