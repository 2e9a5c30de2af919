"""The compression recipe: one frozen dataclass; CLI flags and YAML keys map onto its fields."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from ..quant import SCHEMES, Scheme, get_scheme
from ..errors import LlmpressError
from ..yamlfile import read_yaml


class RecipeError(LlmpressError, ValueError):
    """A recipe mistake; the message names the key (and line) and the fix."""


@dataclass(frozen=True)
class Recipe:
    scheme: str = "W4A16"
    group_size: int | None = None  # None: the scheme's own (128 for W4A16)
    targets: tuple[str, ...] = ("Linear",)  # "Linear" = every nn.Linear in the decoder layers; or names / "re:..."
    ignore: tuple[str, ...] = ("lm_head",)
    num_samples: int = 128
    max_seq_len: int = 512
    dataset: str = "sharegpt"  # "sharegpt" | a .json/.jsonl file | "hub:NAME[:split]" (online)
    seed: int = 42
    dampening_frac: float = 0.1
    actorder: bool = True  # visit columns by decreasing Hessian diagonal (static groups: no g_idx)
    observer: str | None = None  # None: the scheme's own ("mse" for int schemes; after awq, scored on the output: AWQ's clip); or "minmax" / "mse"
    gptq: bool | None = None  # None: the scheme's own (GPTQ for int schemes, round-to-nearest for FP8_DYNAMIC)
    algorithm: str | None = None  # None: as `gptq` says; or one of ALGORITHMS (awq: AWQ scales first, awq.py)
    sequential: bool = True  # Llama-family layers: quantize q/k/v -> o -> gate/up -> down in one staged pass
    # SmoothQuant α for schemes with int8 activations; 0 turns it off. None: 0.8, or 0 with `rotate`: the rotation
    # already spreads the outlier channels (QuaRot uses none), and smoothing on top cost KL on the default model's
    # W8A8 (0.0129 vs 0.0124, paired -0.00049 ± 0.00015 nats/token; benchmarks/README.md, "Hadamard rotation")
    smoothing_strength: float | None = None
    # SmoothQuant α for up_proj -> down_proj (staged Llama-family layers, int8 activations): down_proj reads the gated
    # MLP activation, the widest-ranged input and one a residual rotation does not reach. None: searched per layer
    # (smoothquant.search_smoothing; 0 is a candidate), since one α for all is fragile: on the default model 0.3 gave
    # KL 0.0075, 0.5 0.0088, 0.65 0.0155 and 0.8 worse than none (benchmarks/README.md, "W8A8: up -> down")
    mlp_smoothing_strength: float | None = None
    device: str = "auto"  # "auto" = cuda when present, else cpu
    rotate: bool = False  # QuaRot / SpinQuant R1 + R2 Hadamard rotations fused into the weights first (rotate.py)
    dtype: str = "auto"  # calibration forward dtype: "auto" (bf16 on GPU; on CPU the faster, measured) | float32 | bfloat16
    budget: float | None = None  # average bits per target weight (scales included): W4 / W8 / unquantized per unit (budget.py)
    # GPTQ toward the float model: each Linear's target is the float layer's output on the float model's inputs,
    # not its own output on the already-quantized model's inputs (GPTAQ, gptq.asymmetric_target); staged path only
    float_target: bool = False

    def __post_init__(self) -> None:
        try:
            get_scheme(str(self.scheme))
        except ValueError as e:
            raise RecipeError(str(e)) from None
        object.__setattr__(self, "scheme", self.scheme.upper())
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size <= 0):
            raise RecipeError(f"group_size must be a positive integer, got {self.group_size!r}")
        if not isinstance(self.num_samples, int) or self.num_samples <= 0:
            raise RecipeError(f"num_samples must be a positive integer, got {self.num_samples!r}")
        if not isinstance(self.max_seq_len, int) or self.max_seq_len < 8:
            raise RecipeError(f"max_seq_len must be an integer >= 8, got {self.max_seq_len!r}")
        if not 0 <= self.dampening_frac < 10:
            raise RecipeError(f"dampening_frac must be in [0, 10), got {self.dampening_frac!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise RecipeError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.rotate not in (True, False):
            raise RecipeError(f"rotate must be true or false, got {self.rotate!r}")
        if self.float_target not in (True, False):
            raise RecipeError(f"float_target must be true or false, got {self.float_target!r}")
        if self.gptq not in (None, True, False):
            raise RecipeError(f"gptq must be true or false, got {self.gptq!r}")
        if self.algorithm is not None:
            self._check_algorithm()
        if self.observer not in (None, "mse", "minmax"):
            raise RecipeError(f"observer must be 'mse' or 'minmax', got {self.observer!r}")
        if self.smoothing_strength is None:
            object.__setattr__(self, "smoothing_strength", 0.0 if self.rotate else 0.8)
        if isinstance(self.smoothing_strength, bool) or not 0 <= self.smoothing_strength <= 1:
            raise RecipeError(f"smoothing_strength must be in [0, 1], got {self.smoothing_strength!r}")
        m = self.mlp_smoothing_strength
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1):
            raise RecipeError(f"mlp_smoothing_strength must be in [0, 1], got {self.mlp_smoothing_strength!r}")
        if self.budget is not None:
            self._check_budget()
        for pat in self.targets + self.ignore:
            if pat.startswith("re:"):
                try:
                    re.compile(pat[3:])
                except re.error as e:
                    raise RecipeError(f"bad regular expression {pat!r}: {e}") from None

    def _check_algorithm(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise RecipeError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.gptq is not None and self.gptq != ("gptq" in self.algorithm):
            raise RecipeError(f"gptq: {str(self.gptq).lower()} contradicts algorithm: {self.algorithm}; drop gptq "
                              "(--gptq / --no-gptq), the algorithm says it")
        scheme = get_scheme(self.scheme)
        if self.uses_awq and scheme.input_activations is not None:
            raise RecipeError(
                f"algorithm {self.algorithm}: AWQ searches scales for weight-only quantization, but {scheme.name} also "
                "quantizes activations, whose error the search does not model (W8A8 has SmoothQuant); use gptq or rtn")

    def _check_budget(self) -> None:
        from .budget import cheapest_bits

        b = self.budget
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise RecipeError(f"budget must be a number of bits per weight (e.g. 4.5), got {b!r}")
        if self.scheme == "W4A16_ASYM":  # transformers 5.25 misreads it one way or the other (eval/perplexity.py)
            raise RecipeError(f"budget {b} with W4A16_ASYM: transformers 5.25 runs packed int4 zero points only by "
                              "decompressing at load, which reads every module with the first config group's scheme, "
                              "so `llmpress check` / `ppl` could not measure a mixed checkpoint; use --scheme W4A16")
        if self.scheme != "W4A16":
            raise RecipeError(f"budget {b} mixes W4 / W8 / unquantized layers of a W4A16 recipe, not "
                              f"{self.scheme}; use --scheme W4A16 (or drop --budget)")
        if self.uses_awq:
            raise RecipeError(f"budget {b} with algorithm {self.algorithm}: the sensitivities are measured without "
                              "AWQ's scales; use --algorithm gptq or rtn (or drop --budget)")
        lo = cheapest_bits(self.quant_scheme.weights)
        if not lo <= b < 16:
            g = self.quant_scheme.weights.group_size
            raise RecipeError(f"budget {b} bits is outside [{lo:g}, 16): every weight at {self.scheme} group {g} "
                              f"costs {lo:g} bits (scales included) and 16 leaves everything unquantized; "
                              f"choose a budget in that range (e.g. --budget {lo + 0.375:g})")

    @property
    def uses_awq(self) -> bool:
        return self.algorithm in ("awq", "awq+gptq")

    @property
    def calibrated(self) -> bool:
        """Whether compress reads calibration data: GPTQ's Hessians or AWQ's activation statistics."""
        return self.quant_scheme.uses_gptq or self.uses_awq or self.budget is not None

    def check_applies(self, given) -> None:
        """Refuse fields the user set that this scheme would ignore (never ignore an option silently)."""
        why = self._inapplicable()
        for key in given:
            if why.get(key):
                raise RecipeError(f"{key}: {why[key]}; drop it")

    def _inapplicable(self) -> dict[str, str]:
        """Field -> why this recipe ignores it, for the fields it does."""
        s = self.quant_scheme
        calibrated = self.calibrated
        why = {
            "group_size": None if s.weights.strategy == "group" else
            f"{self.scheme} quantizes weights per channel; group_size applies to W4A16 and W4A16_ASYM",
            "smoothing_strength": None if s.input_activations is not None and s.input_activations.type == "int" else
            f"smoothing_strength (SmoothQuant) applies to schemes with int8 activations (W8A8), not {self.scheme}",
        }
        why["mlp_smoothing_strength"] = why["smoothing_strength"] and "mlp_" + why["smoothing_strength"]
        for key in ("dampening_frac", "actorder", "float_target"):
            why[key] = None if s.uses_gptq else (
                f"{key} applies to GPTQ, which {self.scheme} does not run here "
                + ("(--algorithm awq+gptq)" if self.uses_awq else "(add --gptq)"))
        for key in ("num_samples", "max_seq_len", "dataset"):
            why[key] = None if calibrated else (f"{self.scheme} without GPTQ, AWQ or a budget uses no calibration data, so {key} "
                                                f"does nothing (add --gptq{'' if s.input_activations else ' or --algorithm awq'})")
        return {k: v for k, v in why.items() if v}

    @property
    def quant_scheme(self) -> Scheme:
        s = get_scheme(self.scheme).with_group_size(self.group_size)
        if self.algorithm is not None:
            s = replace(s, uses_gptq="gptq" in self.algorithm)
        elif self.gptq is not None:
            s = replace(s, uses_gptq=self.gptq)
        w = s.weights
        if self.observer:
            w = replace(w, observer=self.observer)
        if self.actorder and s.uses_gptq:
            w = replace(w, actorder="weight")
        return replace(s, weights=w)

    def to_yaml(self) -> str:
        """The recipe as YAML, without the fields it ignores, so that from_yaml reads it back."""
        skip = self._inapplicable()
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        d["targets"], d["ignore"] = list(self.targets), list(self.ignore)
        return yaml.safe_dump(d, sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} not found")
        data, key_lines, _ = read_yaml(path, RecipeError)
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of fields ({', '.join(FIELD_NAMES)})")
        lines = {k[0]: n for k, n in key_lines.items() if len(k) == 1}
        for key in data:
            if key not in FIELD_NAMES:
                raise RecipeError(
                    f"{path}:{lines.get(key, '?')}: unknown recipe key {key!r}; known keys: {', '.join(FIELD_NAMES)}"
                )
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            r = cls(**data)
            r.check_applies(data)
            return r
        except (RecipeError, ValueError) as e:
            bad = next((k for k in data if k in str(e) or (k == "scheme" and "scheme" in str(e))), None)
            where = f"{path}:{lines.get(bad, '?')}" if bad else str(path)
            raise RecipeError(f"{where}: {e}") from None


FIELD_NAMES = tuple(f.name for f in fields(Recipe))
# gptq: GPTQ; rtn: round-to-nearest (= gptq: false); awq: AWQ scales, then round-to-nearest (the paper's
# and llm-compressor's AWQModifier + QuantizationModifier); awq+gptq: AWQ scales, then GPTQ on the scaled weights.
ALGORITHMS = ("gptq", "rtn", "awq", "awq+gptq")
SCHEME_NAMES = tuple(SCHEMES)
