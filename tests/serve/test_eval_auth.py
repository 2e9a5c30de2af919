"""`eval --backend openai` against a server with --api-key: one line at the first 401, before any work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmpress.engine import EngineConfig, LLMEngine

ENGINE_KW = dict(kv_cache_memory_bytes=64 << 20, max_model_len=512)
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def keyed(tiny_llama, start_server):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), max_num_seqs=2, **ENGINE_KW))
    with start_server(engine, api_key="sesame") as s:
        yield s


@pytest.mark.parametrize("key,words", [(None, "no API key"), ("wrong", "wrong API key")])
def test_401_is_one_line(keyed, tmp_path, key, words):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    argv = [sys.executable, "-m", "llmpress.cli", "eval", MODEL, "--backend", "openai", "--base-url", f"{keyed.url}/v1",
            "--tasks", "mmlu", "--limit", "2", "--output", str(tmp_path / "o")] + (["--api-key", key] if key else [])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    line = p.stderr.strip().splitlines()
    assert len(line) == 1 and "401" in line[0] and words in line[0] and "--api-key" in line[0], p.stderr
    assert "sesame" not in p.stderr and not (tmp_path / "o").exists()


def test_right_key_passes_the_check(keyed, monkeypatch):
    from llmpress.eval.run import check_endpoint

    monkeypatch.setenv("OPENAI_API_KEY", "sesame")
    check_endpoint(f"{keyed.url}/v1")  # no EvalError
