"""A checkpoint's `quantization_config` (compressed-tensors' JSON) as dataclasses, and the one
rule for which module a target or ignore pattern names.

    "quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized",
                            "config_groups": {"group_0": {"targets": ["Linear"], "weights": {...},
                                                         "input_activations": null}},
                            "ignore": ["lm_head"], ...}
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .args import QuantArgs


def matches(name: str, patterns: tuple[str, ...] | list[str], class_name: str | None = None) -> bool:
    """llm-compressor's matching: a class name ("Linear", checked when `class_name` is given), a full
    or dotted-suffix module name ("lm_head", "mlp.down_proj"), or a regex on the full name
    ("re:.*down_proj", matched from the start as compressed-tensors does)."""
    for p in patterns:
        if p.startswith("re:"):
            if re.match(p[3:], name):
                return True
        elif p == class_name or name == p or name.endswith("." + p):
            return True
    return False


@dataclass(frozen=True)
class ConfigGroup:
    """One config group: the modules it targets and how their weights / input activations are quantized."""

    targets: tuple[str, ...]
    weights: QuantArgs
    input_activations: QuantArgs | None = None


@dataclass(frozen=True)
class QuantizationConfig:
    quant_method: str
    format: str | None
    groups: tuple[ConfigGroup, ...]
    ignore: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, qc: dict) -> QuantizationConfig:
        """Parse config.json's quantization_config; ValueError naming the group that is malformed."""
        groups = []
        for key, g in (qc.get("config_groups") or {}).items():
            if not isinstance(g, dict) or not isinstance(g.get("weights"), dict):
                raise ValueError(f"config group {key!r} has no weights arguments")
            try:
                acts = g.get("input_activations")
                groups.append(ConfigGroup(tuple(g.get("targets") or ()), QuantArgs.from_ct(g["weights"]),
                                          QuantArgs.from_ct(acts) if acts else None))
            except (TypeError, ValueError) as e:
                raise ValueError(f"config group {key!r}: {e}") from None
        return cls(qc.get("quant_method", ""), qc.get("format"), tuple(groups), tuple(qc.get("ignore") or ()))

    def group_for(self, name: str, class_name: str = "Linear") -> ConfigGroup | None:
        """The config group whose targets match module `name` (None: left unquantized)."""
        if matches(name, self.ignore, class_name):
            return None
        return next((g for g in self.groups if matches(name, g.targets, class_name)), None)
