"""`llmpress check CKPT [--base BASE]`: the quality gate run on every checkpoint compress writes.

Faults it finds (each one fails the checkpoint):
  config      quantization_config that transformers' CompressedTensorsConfig (compressed-tensors'
              own QuantizationConfig model) rejects; a config group whose targets match no module;
              a quantized module without the tensors its format stores, or with scales of the wrong
              shape; tensors stored as quantized that no config group covers
  scales      non-finite, zero or negative weight scales
  groups      groups whose codes are all at the zero point or all at the code range's ends (faults.py)
  tensors     non-finite values in any other floating-point tensor (embeddings, norms, lm_head)
  calibration a quantized module that saw no calibration token (llmpress_compress.json records
              every module's count when the scheme calibrates)
  quality     with a base: KL(base || ckpt) and top-1 agreement over a few hundred held-text tokens,
              computed by eval.perplexity (the code `llmpress ppl --base` runs), against KL_LIMITS
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..checkpoint.shards import LazyCheckpoint, check_replaceable, mark_output
from ..errors import LlmpressError
from . import faults

REPORT_JSON, REPORT_MD, FAILED_REASON = "check.json", "check.md", "CHECK_FAILED.txt"


class CheckError(LlmpressError, ValueError):
    """Input `check` cannot judge (not a compressed-tensors checkpoint, a base of another vocabulary)."""


class CheckFailed(CheckError):
    """A checkpoint that failed the gate; the message is one line naming the first fault and the report."""


@dataclass(frozen=True)
class KLLimit:
    max_kl: float  # nats / token, mean of KL(base || ckpt)
    min_top1: float  # fraction of positions whose argmax agrees


# Limits per weight width, about 4-5x what a working quantizer measures on the default model over the
# first 16,384 Lee tokens (benchmarks/README.md: W4A16 g64 GPTQ KL 0.198; W8A8 0.0149; FP8 round-to-nearest
# 0.0308, top-1 89.6%): a few hundred tokens are noisy (a window's KL varies ~2x), so a working checkpoint
# must not trip them, while a broken one is far beyond (weights shuffled within a matrix: KL of
# several nats, top-1 at chance). Weight-only 8-bit and W8A8 / FP8 share the 8-bit row.
# Top-1 agreement is judged only for a base that predicts the held text (perplexity under this fraction of its
# vocabulary): a random model's next-token distribution is nearly flat and its argmax flips on rounding noise.
CHANCE_PERPLEXITY = 0.1
# The 4-bit top-1 floor sits under what the cheapest working calibration gives (8 samples x 128 tokens, min-max
# ranges, g64: 54.7% over 512 tokens), still far above a broken model's chance level.
KL_LIMITS = {4: KLLimit(max_kl=0.8, min_top1=0.45), 8: KLLimit(max_kl=0.15, min_top1=0.75)}


@dataclass(frozen=True)
class CheckConfig:
    checkpoint: str
    base: str | None = None  # a base model folder, 'default' or hub id: adds the KL / top-1 check
    tokens: int = 512  # held-text tokens scored against the base
    window: int = 256  # tokens per scored window
    max_kl: float | None = None  # None: KL_LIMITS by the checkpoint's weight bits
    min_top1: float | None = None
    text: str | None = None  # held text file (default: the Lee corpus, as `llmpress ppl`)

    def __post_init__(self) -> None:
        if self.tokens < 2 or self.window < 2:
            raise CheckError(f"tokens {self.tokens} / window {self.window}: each must be at least 2, e.g. --tokens 512")
        if self.max_kl is not None and not self.max_kl > 0:
            raise CheckError(f"--max-kl {self.max_kl}: must be > 0 (nats per token), e.g. 0.8")
        if self.min_top1 is not None and not 0 <= self.min_top1 <= 1:
            raise CheckError(f"--min-top1 {self.min_top1}: must be a fraction in [0, 1], e.g. 0.55")


@dataclass(frozen=True)
class Finding:
    check: str  # config | scales | groups | tensors | calibration | quality
    where: str  # a module, tensor or config group; "" for the whole checkpoint
    detail: str


@dataclass
class CheckReport:
    checkpoint: str
    faults: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    modules: int = 0  # quantized modules examined
    groups: int = 0  # quantization groups examined
    quality: dict | None = None  # KL / top-1 / limits, with a base

    @property
    def passed(self) -> bool:
        return not self.faults

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "passed": self.passed, "modules": self.modules, "groups": self.groups,
                "faults": [asdict(f) for f in self.faults], "notes": self.notes, "quality": self.quality}

    def summary(self) -> str:
        if self.passed:
            q = self.quality
            kl = f", KL {q['kl_divergence']:.4f} / top-1 {100 * q['top1_agreement']:.1f}% vs base" if q else ""
            return f"check passed: {self.modules} quantized modules, {self.groups} groups{kl}"
        f = self.faults[0]
        more = f" (+{len(self.faults) - 1} more)" if len(self.faults) > 1 else ""
        return f"check failed: {f.check}: {f.where + ': ' if f.where else ''}{f.detail}{more}"

    def to_markdown(self) -> str:
        lines = [f"# llmpress check: {'passed' if self.passed else 'FAILED'}", "",
                 f"Checkpoint `{self.checkpoint}`: {self.modules} quantized modules, {self.groups} groups examined.", ""]
        if self.quality:
            q = self.quality
            lines += ["| against base | measured | limit |", "|---|---:|---:|",
                      f"| KL divergence (nats/token) | {q['kl_divergence']:.4f} | <= {q['max_kl']} |",
                      f"| top-1 agreement | {100 * q['top1_agreement']:.2f}% | >= {100 * q['min_top1']:.0f}% |",
                      "", f"Over {q['tokens']} tokens of {q['text']}; base `{q['base']}`.", ""]
        if self.faults:
            lines += ["| check | where | fault |", "|---|---|---|"]
            lines += [f"| {f.check} | {f.where or '-'} | {f.detail} |" for f in self.faults] + [""]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def check(cfg: CheckConfig) -> CheckReport:
    """Run every check on cfg.checkpoint (read-only). Bad input raises CheckError; faults go in the report."""
    from ..models import resolve_model

    path = resolve_model(cfg.checkpoint)
    config = _read_config(path)
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "compressed-tensors":
        raise CheckError(f"{path / 'config.json'} has no compressed-tensors quantization_config: not a quantized "
                         "checkpoint; check reads what `llmpress compress` (or llm-compressor) writes")
    ckpt = LazyCheckpoint(path)
    report = CheckReport(str(path))
    groups = _parse_config(qc, report)
    modules = _quantized_modules(path, qc, groups, report)
    _check_tensors(ckpt, modules, report)
    _check_calibration(path, modules, report)
    if cfg.base is not None:
        _check_quality(cfg, path, resolve_model(cfg.base), config, groups, report)
    return report


def _read_config(path: Path) -> dict:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckError(f"{path / 'config.json'}: cannot read it as JSON ({e}); is this a checkpoint folder?") from None
    if not isinstance(config, dict):
        raise CheckError(f"{path / 'config.json'}: not a JSON object; is this a checkpoint folder?")
    return config


def _parse_config(qc: dict, report: CheckReport) -> dict | None:
    """compressed-tensors' QuantizationConfig as transformers builds it when it loads the model
    (CompressedTensorsConfig.from_dict validates every group with pydantic). None if it fails."""
    from transformers.utils.quantization_config import CompressedTensorsConfig

    try:
        parsed = CompressedTensorsConfig.from_dict(dict(qc)).quantization_config
    except Exception as e:  # noqa: BLE001 - pydantic, ValueError, TypeError, KeyError: any rejection is the fault
        first = str(e).strip().splitlines()
        report.faults.append(Finding("config", "quantization_config",
                                     f"transformers + compressed-tensors cannot parse it: {type(e).__name__}: "
                                     f"{' '.join(first[:3])[:300]}"))
        return None
    if parsed is None or not parsed.config_groups:
        report.faults.append(Finding("config", "quantization_config", "no config_groups: nothing is quantized"))
        return None
    return parsed.config_groups


@dataclass(frozen=True)
class _Module:
    name: str
    group: str  # the config group that covers it
    weights: object  # compressed_tensors QuantizationArgs
    format: str
    shape: tuple[int, int]  # [out, in] of the Linear


def _quantized_modules(path: Path, qc: dict, groups: dict | None, report: CheckReport) -> list[_Module]:
    """The modules each config group covers (compressed-tensors' own matching on the model's skeleton,
    built on the meta device); a group that covers none is a fault."""
    if groups is None:
        return []
    from compressed_tensors.utils import match_named_modules

    from ..compress.skeleton import meta_model

    _, skeleton = meta_model(path)
    ignore = list(qc.get("ignore") or [])
    out: dict[str, _Module] = {}
    for gname, scheme in groups.items():
        found = [(n, m) for n, m in match_named_modules(skeleton, scheme.targets, ignore)
                 if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim == 2]
        if not found:
            report.faults.append(Finding("config", gname, f"targets {list(scheme.targets)} (minus ignore {ignore}) "
                                                          "match no module of the model"))
            continue
        if scheme.weights is None:
            continue
        fmt = scheme.format or qc.get("format") or ""
        for n, m in found:
            out.setdefault(n, _Module(n, gname, scheme.weights, fmt, tuple(m.weight.shape)))
    return list(out.values())


def _check_tensors(ckpt: LazyCheckpoint, modules: list[_Module], report: CheckReport) -> None:
    keys = set(ckpt.keys())
    covered: set[str] = set()
    for mod in modules:
        stored = {k.removeprefix(mod.name + "."): k for k in keys if k.startswith(mod.name + ".weight")}
        covered.update(stored.values())
        need = {"pack-quantized": ("weight_packed", "weight_shape", "weight_scale")}.get(mod.format, ("weight", "weight_scale"))
        if not mod.weights.symmetric and mod.weights.type == "int":
            need += ("weight_zero_point",)
        missing = [s for s in need if s not in stored]
        if missing:
            report.faults.append(Finding("config", mod.name, f"config group {mod.group} ({mod.format}) quantizes it, "
                                                             f"but {', '.join(missing)} is not stored"))
            continue
        t = {s: ckpt.get(k) for s, k in stored.items()}
        report.modules += 1
        bad_nf, bad_zero = faults.scale_faults(t["weight_scale"])
        if bad_nf or bad_zero:
            what = ", ".join(x for x in (f"{bad_nf} non-finite" if bad_nf else "", f"{bad_zero} zero or negative"
                                         if bad_zero else "") if x)
            report.faults.append(Finding("scales", mod.name, f"{what} of {t['weight_scale'].numel()} weight scales"))
        out, cols = mod.shape
        want = faults.expected_scale_shape(out, cols, mod.weights.strategy, mod.weights.group_size)
        if want is not None and tuple(t["weight_scale"].shape) != want:
            report.faults.append(Finding("config", mod.name, f"weight_scale has shape {tuple(t['weight_scale'].shape)}, "
                                         f"config group {mod.group} ({mod.weights.strategy}, group_size "
                                         f"{mod.weights.group_size}) implies {want}"))
            continue
        q, zp = faults.codes(t, mod.weights.num_bits)
        if tuple(q.shape) != (out, cols):
            report.faults.append(Finding("config", mod.name, f"stored codes have shape {tuple(q.shape)}, the model's "
                                                             f"Linear is {(out, cols)}"))
            continue
        g = t["weight_scale"].shape[-1] if want is not None and len(want) == 2 else 1
        qmin, qmax = _code_range(mod.weights)
        gf = faults.group_faults(q, zp, g, qmin, qmax)
        report.groups += gf.groups
        for name, mask in (("all-zero", gf.all_zero), ("saturated (every code at the range's ends)", gf.saturated)):
            if mask.any():
                report.faults.append(Finding("groups", mod.name, f"{int(mask.sum())} of {gf.groups} groups {name}"))
    for k in sorted(keys - covered):
        if k.endswith(("weight_scale", "weight_packed")):
            report.faults.append(Finding("config", k, "stored quantized, but no config group covers its module"))
            continue
        if bad := faults.nonfinite_count(ckpt.get(k)):
            report.faults.append(Finding("tensors", k, f"{bad} non-finite values"))


def _code_range(args) -> tuple[float, float]:
    if args.type == "float":
        return -448.0, 448.0  # fp8 e4m3's finite range
    return float(-(1 << (args.num_bits - 1))), float((1 << (args.num_bits - 1)) - 1)


def _check_calibration(path: Path, modules: list[_Module], report: CheckReport) -> None:
    rec_file = path / "llmpress_compress.json"
    if not rec_file.is_file():
        report.notes.append("no llmpress_compress.json: calibration token counts not recorded (not written by "
                            "`llmpress compress`), so calibration was not checked")
        return
    try:
        rec = json.loads(rec_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckError(f"{rec_file}: not JSON ({e}); rewrite the checkpoint with `llmpress compress`") from None
    tokens = rec.get("calibration_tokens")
    if tokens is None:
        report.notes.append("llmpress_compress.json records no calibration (round-to-nearest, data-free scheme, "
                            "or written before llmpress recorded per-module counts)")
        return
    for mod in modules:
        n = tokens.get(mod.name)
        if not n:
            report.faults.append(Finding("calibration", mod.name, "saw no calibration tokens" if n == 0 else
                                         "quantized, but llmpress_compress.json records no calibration for it"))


def _check_quality(cfg: CheckConfig, path: Path, base: Path, config: dict, groups, report: CheckReport) -> None:
    from ..eval.perplexity import TextError, perplexity

    base_config = _read_config(base)
    if base_config.get("vocab_size") != config.get("vocab_size"):
        raise CheckError(f"--base {cfg.base}: vocabulary {base_config.get('vocab_size')} differs from the checkpoint's "
                         f"{config.get('vocab_size')}; pass the model it was compressed from")
    if groups is None:
        report.notes.append("KL vs base not measured: the quantization_config does not parse")
        return
    bits = min(s.weights.num_bits for s in groups.values() if s.weights is not None)
    limit = KL_LIMITS.get(bits, KL_LIMITS[4])
    max_kl = cfg.max_kl if cfg.max_kl is not None else limit.max_kl
    min_top1 = cfg.min_top1 if cfg.min_top1 is not None else limit.min_top1
    try:
        r = perplexity(path, base, cfg.text, window=cfg.window, max_tokens=cfg.tokens, progress=False)
    except (RuntimeError, ValueError, KeyError, OSError) as e:  # what transformers raises on a checkpoint it cannot load
        if isinstance(e, TextError):
            raise
        first = " ".join(str(e).strip().splitlines()[:2])[:300]
        report.faults.append(Finding("config", "", f"transformers + compressed-tensors cannot load it: "
                                                   f"{type(e).__name__}: {first}"))
        return
    report.quality = dict(base=str(base), text=r.text, tokens=r.tokens, kl_divergence=r.kl_divergence,
                          top1_agreement=r.top1_agreement, perplexity=r.perplexity, base_perplexity=r.base_perplexity,
                          max_kl=max_kl, min_top1=min_top1, weight_bits=bits)
    if not (math.isfinite(r.kl_divergence) and r.kl_divergence <= max_kl):
        report.faults.append(Finding("quality", "", f"KL vs base {r.kl_divergence:.4f} nats/token over {r.tokens} "
                                                    f"tokens exceeds {max_kl} ({bits}-bit limit)"))
    vocab = config.get("vocab_size") or 0
    if vocab and r.base_perplexity > CHANCE_PERPLEXITY * vocab:
        report.notes.append(f"top-1 agreement not judged: the base's perplexity {r.base_perplexity:.0f} is near its "
                            f"vocabulary's {vocab} (it predicts at chance, so its argmax is a tie-break)")
    elif not r.top1_agreement >= min_top1:
        report.faults.append(Finding("quality", "", f"top-1 agreement with base {100 * r.top1_agreement:.1f}% is "
                                                    f"below {100 * min_top1:.0f}% ({bits}-bit limit)"))


def write_report(report: CheckReport, folder: Path) -> None:
    (folder / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (folder / REPORT_MD).write_text(report.to_markdown())


def set_aside(tmp: Path, output: str | os.PathLike, report: CheckReport) -> Path:
    """Move a failed checkpoint from its temporary folder to OUTPUT.failed/ with the reason in
    CHECK_FAILED.txt, never into OUTPUT: what sits at OUTPUT is always a checkpoint that passed.
    An earlier OUTPUT.failed/ is replaced only if llmpress wrote it."""
    out = Path(output).expanduser().resolve()
    failed = out.with_name(out.name + ".failed")
    write_report(report, tmp)
    (tmp / FAILED_REASON).write_text(report.summary() + f"\n\nFull report: {REPORT_MD}\n")
    mark_output(tmp)
    if failed.exists():
        check_replaceable(failed)
        shutil.rmtree(failed)
    os.replace(tmp, failed)
    return failed
