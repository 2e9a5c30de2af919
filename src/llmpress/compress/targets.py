"""Which modules get quantized: the decoder layers of a causal LM, the Linears in them
that match `targets` and not `ignore`, and the SmoothQuant norm -> Linear pairs."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import LlmpressError
from ..layout import NORM_READERS
from ..quant import matches


class ModelStructureError(LlmpressError, ValueError):
    """A model we cannot walk; the message names what is missing."""


def find_decoder_layers(model: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder layers (`model.layers` for Llama, Mistral, Qwen2, ...)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == num_layers and name.endswith("layers"):
            return name, mod
    raise ModelStructureError(
        f"{type(model).__name__}: found no list of {num_layers} decoder layers; "
        "llmpress compresses decoder-only LMs whose layers sit in a `layers` ModuleList (Llama, Mistral, Qwen2, ...)"
    )


ROUTER_NAMES = ("gate", "router", "shared_expert_gate")


def is_router(name: str, layer: nn.Module) -> bool:
    """A mixture-of-experts router / expert gate: a module named gate, router or
    shared_expert_gate beside an experts module. Quantizing it changes which experts run,
    so it stays in full precision unless a target names it."""
    parent, _, child = name.rpartition(".")
    if child not in ROUTER_NAMES:
        return False
    owner = layer.get_submodule(parent) if parent else layer
    return any("expert" in n for n, _ in owner.named_children())


def target_linears(
    layer: nn.Module, prefix: str, targets: tuple[str, ...], ignore: tuple[str, ...]
) -> dict[str, nn.Linear]:
    """Local name -> Linear for the quantized modules of one decoder layer."""
    out = {}
    for name, mod in layer.named_modules():
        full = f"{prefix}.{name}"
        cls = type(mod).__name__
        if isinstance(mod, nn.Linear) and matches(full, targets, cls) and not matches(full, ignore, cls):
            if is_router(name, layer) and not matches(full, targets):  # a router only when named
                continue
            out[name] = mod
    return out


def group_size_problems(layer: nn.Module, names: list[str], group_size: int) -> list[str]:
    return [f"{n} (in_features {layer.get_submodule(n).in_features})" for n in names if layer.get_submodule(n).in_features % group_size]


def smooth_pairs(layer: nn.Module, quantized: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    """The norm -> readers pairs (layout.NORM_READERS) present in this layer whose readers are all quantized."""
    pairs = []
    for norm, readers in NORM_READERS:
        if _has(layer, norm) and all(r in quantized for r in readers):
            pairs.append((norm, readers))
    return pairs


def _has(layer: nn.Module, name: str) -> bool:
    try:
        mod = layer.get_submodule(name)
    except AttributeError:
        return False
    return isinstance(getattr(mod, "weight", None), torch.Tensor)
