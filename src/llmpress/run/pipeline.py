"""`llmpress run`: compress every scheme, evaluate, benchmark, write the card; resumable.

The output folder holds one folder per stage output and `run.json`, the ledger:

    OUT/recipe.yaml              the run recipe, as given
    OUT/models/<SCHEME>/         compressed-tensors checkpoint (+ README.md, its card)
    OUT/eval/<SCHEME>/           eval.json / eval.md / eval.png
    OUT/bench/<SCHEME>/          bench.json / bench.md / plots
    OUT/README.md                the card for all schemes (+ report.html with --report)
    OUT/run.json                 per stage: the key of its inputs, wall time, hardware

A stage's key hashes everything it reads: its settings and the content fingerprints of the
models it reads (not their paths). Every stage writes to a temporary folder renamed into place
(so a killed stage leaves nothing), and the ledger is updated after the rename; a rerun skips a
stage whose key is in the ledger and whose folder exists. So a crash or Ctrl-C resumes where
it stopped, and a changed recipe redoes only the stages whose inputs changed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

from .recipe import RunRecipe
from ..errors import LlmpressError

LEDGER = "run.json"


class RunError(LlmpressError, ValueError):
    """A run that cannot start; the message names the folder or setting and the fix."""


def hardware() -> dict:
    """What the stages ran on, for the card's "measured on" sentence."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    hw = {"cpu": cpu, "cpu_cores": os.cpu_count(), "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            hw["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - hardware facts are best effort
        pass
    return hw


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class Ledger:
    """run.json: which stage finished with which input key; written atomically after each stage."""

    def __init__(self, folder: Path):
        self.path = folder / LEDGER
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"stages": {}}

    def done(self, name: str, key: str, output: Path) -> bool:
        return self.data["stages"].get(name, {}).get("key") == key and output.exists()

    def record(self, name: str, key: str, wall_s: float) -> None:
        self.data["stages"][name] = {"key": key, "wall_s": round(wall_s, 1), "hardware": hardware()}
        tmp = self.path.with_name(f".{LEDGER}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def _stage(ledger: Ledger, name: str, key: str, output: Path, work: Callable[[], None], log) -> bool:
    """Run `work` unless the ledger already has `name` with `key`; returns whether it ran."""
    if ledger.done(name, key, output):
        log(f"{name}: inputs unchanged, kept")
        return False
    log(f"{name}: running")
    t0 = time.monotonic()
    work()
    ledger.record(name, key, time.monotonic() - t0)
    log(f"{name}: done in {time.monotonic() - t0:.1f} s")
    return True


def _clear_leftovers(out: Path) -> None:
    """Temporary folders of stages killed mid-way (SIGKILL skips their cleanup)."""
    for sub in ("models", "eval", "bench"):
        for p in (out / sub).glob(".*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def prepare_output(out: Path, overwrite: bool, preflight: Callable[[], None] = lambda: None) -> None:
    """Check `out` can be the run folder, run `preflight` (checks that may fetch data), then create it."""
    from ..checkpoint.shards import OutputExistsError, check_replaceable, mark_output, umask_mode

    if out.exists() and any(out.iterdir()) and not (out / LEDGER).is_file():
        if not overwrite:
            raise RunError(f"output {out} exists and is not an llmpress run folder (no {LEDGER}); "
                           "pick another --output or pass --overwrite to replace it")
    if overwrite and out.exists():
        try:
            check_replaceable(out)
        except OutputExistsError as e:
            raise RunError(str(e)) from None
    preflight()
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True, mode=umask_mode())
    mark_output(out)


def run(recipe: RunRecipe, output: str | Path, overwrite: bool = False, report: bool = False,
        progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Every stage of `recipe` into `output`; stages whose inputs are unchanged are kept."""
    from ..compress import compress
    from ..models import model_fingerprint
    from ..models import resolve_model

    out = Path(output).expanduser().resolve()

    def preflight() -> None:  # data an eval stage still to run will fetch: before anything is written or compressed
        if recipe.eval is not None and (overwrite or not all((out / "eval" / r.scheme).is_dir() for r in recipe.schemes)):
            from ..eval.run import check_task_data

            check_task_data(recipe.eval_config("-").tasks)

    prepare_output(out, overwrite, preflight)
    _clear_leftovers(out)
    (out / "recipe.yaml").write_text(recipe.source)
    ledger = Ledger(out)
    base_path = resolve_model(recipe.model)
    base_fp = model_fingerprint(base_path)

    checkpoints: dict[str, Path] = {}
    for r in recipe.schemes:
        dest = out / "models" / r.scheme
        key = _key(stage="compress", model=base_fp, recipe=dataclasses.asdict(r))
        _stage(ledger, f"compress/{r.scheme}", key, dest,
               lambda r=r, dest=dest: compress(recipe.model, r, dest, overwrite=True, progress=progress), log)
        checkpoints[r.scheme] = dest

    fps = {s: model_fingerprint(p) for s, p in checkpoints.items()}
    if recipe.eval is not None:
        from ..eval.run import evaluate

        for s, ckpt in checkpoints.items():
            cfg = recipe.eval_config(str(ckpt))
            dest = out / "eval" / s
            settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("model", "base")}
            key = _key(stage="eval", model=fps[s], base=base_fp, settings=settings)
            _stage(ledger, f"eval/{s}", key, dest, lambda cfg=cfg, dest=dest: evaluate(cfg, dest, overwrite=True, progress=progress), log)

    if recipe.bench is not None:
        from ..bench.run import run as bench

        for s, ckpt in checkpoints.items():
            cfg = recipe.bench_config(str(ckpt))
            dest = out / "bench" / s
            settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("launch", "base")}
            key = _key(stage="bench", model=fps[s], base=base_fp, settings=settings)
            _stage(ledger, f"bench/{s}", key, dest, lambda cfg=cfg, dest=dest: bench(cfg, dest, overwrite=True, progress=progress), log)

    from ..card import write_cards

    paths = write_cards(out, html=report)
    log("card: " + ", ".join(str(p.relative_to(out)) for p in paths))
    return out
