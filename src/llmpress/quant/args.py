"""Quantization arguments and the named schemes (llm-compressor's preset names).

A scheme says how a Linear's weight (and, for W8A8 / FP8, its input activations) are
quantized. The field names and values are compressed-tensors' own (`QuantizationArgs`), so
`to_ct()` is what lands in config.json and `from_ct()` reads any checkpoint's back: the
compressor, the checkpoint writer and the engine all speak this one dataclass.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

Strategy = Literal["tensor", "channel", "group", "token", "block", "tensor_group", "attn_head"]

FP8_DTYPE = torch.float8_e4m3fn  # OCP e4m3 "fn": finite only, largest value 448
FP8_MAX = 448.0


@dataclass(frozen=True)
class QuantArgs:
    num_bits: int
    type: Literal["int", "float"] = "int"
    symmetric: bool = True
    strategy: Strategy = "channel"
    group_size: int | None = None
    dynamic: bool | Literal["local"] = False
    observer: str | None = "minmax"
    actorder: Literal["weight", "group", "static", "dynamic"] | None = None
    block_structure: tuple[int, ...] | None = None

    @property
    def qmin(self) -> float:
        return -FP8_MAX if self.type == "float" else float(-(1 << (self.num_bits - 1)))

    @property
    def qmax(self) -> float:
        return FP8_MAX if self.type == "float" else float((1 << (self.num_bits - 1)) - 1)

    def to_ct(self) -> dict:
        """compressed-tensors QuantizationArgs as JSON."""
        return {
            "num_bits": self.num_bits,
            "type": self.type,
            "symmetric": self.symmetric,
            "group_size": self.group_size if self.strategy == "group" else None,
            "strategy": self.strategy,
            "block_structure": list(self.block_structure) if self.block_structure else None,
            "dynamic": self.dynamic,
            "actorder": self.actorder,
            "observer": None if self.dynamic else self.observer,
            "observer_kwargs": {},
        }

    @classmethod
    def from_ct(cls, d: dict) -> QuantArgs:
        """A checkpoint's QuantizationArgs JSON (ours or llm-compressor's) as QuantArgs. Missing
        fields take compressed-tensors' defaults (8-bit symmetric int, tensor strategy)."""
        if not isinstance(d, dict) or not isinstance(d.get("num_bits", 8), int):
            raise ValueError(f"not a QuantizationArgs object: {d!r}")
        strategy = d.get("strategy") or ("group" if d.get("group_size") else "tensor")
        block = d.get("block_structure")
        return cls(
            num_bits=d.get("num_bits", 8),
            type=d.get("type", "int"),
            symmetric=d.get("symmetric", True),
            strategy=strategy,
            group_size=d.get("group_size"),
            dynamic=d.get("dynamic", False),
            observer=d.get("observer"),
            actorder=d.get("actorder"),
            block_structure=tuple(block) if block else None,
        )


@dataclass(frozen=True)
class Scheme:
    name: str
    weights: QuantArgs
    input_activations: QuantArgs | None = None
    uses_gptq: bool = True  # FP8-dynamic is round-to-nearest and needs no data
    packed: bool = False  # int weights int32-packed even at 8 bits (pack-quantized, vLLM's WNA16 path: --budget's W8)

    @property
    def format(self) -> str:
        """compressed-tensors format of the saved weights."""
        if self.weights.type == "float":
            return "float-quantized"
        if self.weights.num_bits < 8 or self.packed:
            return "pack-quantized"
        return "int-quantized"

    def with_group_size(self, group_size: int | None) -> Scheme:
        if group_size is None or self.weights.strategy != "group":
            return self
        return replace(self, weights=replace(self.weights, group_size=group_size))


# Activations quantized at run time, one scale per token (row), as vLLM does for W8A8 / FP8-dynamic.
INT8_PER_TOKEN = QuantArgs(8, "int", True, "token", dynamic=True, observer=None)
FP8_PER_TOKEN = QuantArgs(8, "float", True, "token", dynamic=True, observer=None)

SCHEMES: dict[str, Scheme] = {
    "W4A16": Scheme("W4A16", QuantArgs(4, "int", True, "group", 128, observer="mse")),
    "W4A16_ASYM": Scheme("W4A16_ASYM", QuantArgs(4, "int", False, "group", 128, observer="mse")),
    "W8A16": Scheme("W8A16", QuantArgs(8, "int", True, "channel", observer="mse")),
    "W8A8": Scheme("W8A8", QuantArgs(8, "int", True, "channel", observer="mse"), INT8_PER_TOKEN),
    "FP8_DYNAMIC": Scheme(
        "FP8_DYNAMIC", QuantArgs(8, "float", True, "channel", observer="minmax"), FP8_PER_TOKEN, uses_gptq=False
    ),
}


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name.upper()]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}") from None
