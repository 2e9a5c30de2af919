"""The plan's predictions against real compress runs: peak RSS and wall time.

    python benchmarks/plan_accuracy.py MODEL --scheme W4A16 --num-samples 32 --max-seq-len 512 [--group-size 128]

Runs `llmpress compress` in a subprocess, samples its RSS every 0.2 s (psutil, the process tree),
and prints predicted vs measured peak RSS and wall time, with the error, as one JSON line; the RSS
timeline goes to OUT/rss.tsv so the phase of the peak can be read off.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from llmpress import plan
from llmpress.compress import Recipe
from llmpress.compress.calibrate import fastest_cpu_dtype


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--scheme", default="W4A16")
    p.add_argument("--group-size", type=int)
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--dataset", default="sharegpt")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default=None, help="folder for the checkpoint and rss.tsv (default: a temp dir)")
    a = p.parse_args()

    recipe = Recipe(scheme=a.scheme, group_size=a.group_size, num_samples=a.num_samples, max_seq_len=a.max_seq_len,
                    dataset=a.dataset, dtype=a.dtype)
    cfg, _, _, sb = plan.model_facts(a.model)
    cb = {"float32": 4, "bfloat16": 2}.get(a.dtype) or fastest_cpu_dtype().itemsize
    est = plan.plan_compress(cfg, plan.compress_run(recipe, sb, cb), plan.this_machine(None))
    out = Path(a.out or tempfile.mkdtemp(prefix="plan-accuracy-"))
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "llmpress.cli", "compress", a.model, "--scheme", a.scheme, "--num-samples",
           str(a.num_samples), "--max-seq-len", str(a.max_seq_len), "--dataset", a.dataset, "--dtype", a.dtype,
           "--output", str(out / "ckpt"), "--overwrite"] + (["--group-size", str(a.group_size)] if a.group_size else [])
    t0 = time.time()
    proc = subprocess.Popen(cmd, env={**os.environ, "LLMPRESS_SKIP_PLAN": "1"}, stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    peak, rows = 0, []
    while proc.poll() is None:
        try:
            rss = sum(q.memory_info().rss for q in [ps, *ps.children(recursive=True)])
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        rows.append(f"{time.time() - t0:.1f}\t{rss}")
        time.sleep(0.2)
    wall = time.time() - t0
    (out / "rss.tsv").write_text("\n".join(rows) + "\n")
    if proc.returncode:
        sys.exit(f"compress failed ({proc.returncode})")
    print(json.dumps({
        "model": a.model, "scheme": a.scheme, "samples": a.num_samples, "seq": a.max_seq_len,
        "calib_bytes": cb, "predicted_peak_gb": round(est.peak_ram / 1e9, 3), "measured_peak_gb": round(peak / 1e9, 3),
        "peak_error_pct": round(100 * (est.peak_ram - peak) / peak, 1), "predicted_phase": est.peak_phase,
        "predicted_wall_s": round(est.wall_s), "measured_wall_s": round(wall),
        "wall_error_pct": round(100 * (est.wall_s - wall) / wall, 1), "out": str(out)}))


if __name__ == "__main__":
    main()
