"""`llmpress run` on a tiny model: SIGKILL during the second scheme's compression and
during eval, rerun, and the outputs equal an uninterrupted run's, byte for byte where the
stages are deterministic; finished stages are never redone; a changed recipe redoes only
what it affects."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

RECIPE = """\
model: {model}
schemes:
  - scheme: W4A16
    group_size: 64
  - W8A8
compress:
  num_samples: 8
  max_seq_len: 64
  dataset: {calib}
eval:
  tasks: [mmlu, ppl]
  limit: {{mmlu: {mmlu}}}
  num_fewshot: 0
  ppl_tokens: 256
  batch_size: 4
  max_model_len: 1024
card:
  license: apache-2.0
"""


def _env(cache: Path) -> dict:
    return {**os.environ, "LLMPRESS_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def _run(recipe: Path, out: Path, env: dict, kill_at: str | None = None) -> list[str]:
    """`llmpress run`; with `kill_at`, SIGKILL it as soon as it prints that stage's "running" line."""
    cmd = [sys.executable, "-m", "llmpress.cli", "run", str(recipe), "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if kill_at and line.strip() == f"{kill_at}: running":
            proc.send_signal(signal.SIGKILL)
            break
    rc = proc.wait(600)
    if kill_at:
        assert rc == -signal.SIGKILL, (rc, lines)
    else:
        assert rc == 0, lines
    return lines


def _files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.glob(pattern))}


def test_kill_resume_equals_uninterrupted(tiny_llama, calib_file, tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text(RECIPE.format(model=tiny_llama, calib=calib_file, mmlu=3))
    out, env = tmp_path / "out", _env(tmp_path / "cache")

    _run(recipe, out, env, kill_at="compress/W8A8")
    assert (out / "models" / "W4A16" / "config.json").is_file()
    assert not (out / "models" / "W8A8").exists(), "killed too late: W8A8 had finished"
    w4_mtime = (out / "models" / "W4A16" / "config.json").stat().st_mtime_ns

    lines = _run(recipe, out, env, kill_at="eval/W4A16")
    assert "compress/W4A16: inputs unchanged, kept" in lines and "compress/W8A8: running" in lines
    assert not (out / "eval" / "W4A16").exists()

    lines = _run(recipe, out, env)
    assert "compress/W4A16: inputs unchanged, kept" in lines and "compress/W8A8: inputs unchanged, kept" in lines
    assert "eval/W4A16: running" in lines and "eval/W8A8: running" in lines
    assert (out / "models" / "W4A16" / "config.json").stat().st_mtime_ns == w4_mtime  # never redone
    assert not list(out.rglob(".*.tmp-*")), "a killed stage's temporary folder was left behind"

    clean = tmp_path / "clean"
    _run(recipe, clean, _env(tmp_path / "cache-clean"))
    for pattern in ("models/*/*.safetensors", "models/*/config.json", "models/*/README.md", "README.md"):
        got, want = _files(out, pattern), _files(clean, pattern)
        assert got and got == want, pattern
    for s in ("W4A16", "W8A8"):
        rows = lambda root: json.loads((root / "eval" / s / "eval.json").read_text())["rows"]  # noqa: E731
        assert rows(out) == rows(clean)

    # a changed eval setting redoes eval only
    from llmpress.run import load, run

    recipe.write_text(RECIPE.format(model=tiny_llama, calib=calib_file, mmlu=2))
    log: list[str] = []
    run(load(recipe), out, progress=False, log=log.append)
    assert "compress/W4A16: inputs unchanged, kept" in log and "compress/W8A8: inputs unchanged, kept" in log
    assert "eval/W4A16: running" in log and "eval/W8A8: running" in log


def test_output_not_a_run_folder_is_kept(tmp_path, tiny_llama, calib_file):
    from llmpress.run import RunError, load, run

    recipe = tmp_path / "run.yaml"
    recipe.write_text(RECIPE.format(model=tiny_llama, calib=calib_file, mmlu=3))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not an llmpress run folder"):
        run(load(recipe), tmp_path / "taken", progress=False)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
