"""`llmpress serve` as users start it: a real process on a free port, bound to loopback,
that finishes in-flight streams on SIGTERM and shuts down cleanly; and `--engine vllm`."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmpress.cli import main
from llmpress.serve.launch import ServeOptions, vllm_argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_process_answers_then_drains_on_sigterm(tiny_llama, tmp_path):
    port = _free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "llmpress.cli", "serve", str(tiny_llama), "--port", str(port), "--api-key", "k",
           "--kv-cache-memory-bytes", str(32 << 20), "--max-model-len", "512"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        auth = {"Authorization": "Bearer k"}
        assert httpx.get(f"{url}/v1/models", headers=auth).json()["data"][0]["id"] == "tiny-llama"  # the folder name
        body = {"model": "tiny-llama", "prompt": "Hello", "max_tokens": 200, "temperature": 0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=auth, timeout=60) as r:
            lines = r.iter_lines()
            events = [next(line for line in lines if line.startswith("data: "))[6:]]
            proc.send_signal(signal.SIGTERM)  # mid-stream: uvicorn stops accepting, the stream finishes
            events += [line[6:] for line in lines if line.startswith("data: ")]
        # The stream coalesces tokens made between two sends, so on a fast machine the first event may
        # already carry them all; what must hold either way is a complete stream: every token, the finish
        # reason, the usage chunk and [DONE].
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"  # the last choice chunk, then usage
        assert chunks[-1]["usage"]["completion_tokens"] == 200
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit status is SIGTERM's
        assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f"http://127.0.0.1:{port}" in text  # loopback unless --host says otherwise
    assert "Application shutdown complete" in text and "Traceback" not in text


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_engine_vllm_without_vllm_is_a_clear_error(tiny_llama, capsys):
    assert main(["serve", str(tiny_llama), "--engine", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "vLLM" in err and "not installed" in err and "--engine embedded" in err


def test_vllm_flags_are_mapped(tmp_path):
    model = tmp_path / "my-model"
    o = ServeOptions(model=str(model), host="0.0.0.0", port=9000, api_key="k", max_model_len=2048, max_num_seqs=64,
                     kv_cache_memory_bytes=1 << 30, dtype="bfloat16", engine="vllm")
    argv = vllm_argv(o, Path(model))
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    at = argv.index("--served-model-name")
    pairs = dict(zip(argv[3:at:2], argv[4:at:2]))
    assert pairs["--model"] == str(model) and pairs["--port"] == "9000" and pairs["--host"] == "0.0.0.0"
    assert pairs["--api-key"] == "k" and pairs["--max-model-len"] == "2048" and pairs["--max-num-seqs"] == "64"
    assert pairs["--kv-cache-memory-bytes"] == str(1 << 30) and pairs["--dtype"] == "bfloat16"
    assert argv[at + 1 :] == ["my-model", str(model)]  # the folder name first, as on the embedded server


def test_bad_serve_flags_exit_2(tiny_llama, capsys):
    assert main(["serve", str(tiny_llama), "--max-queue", "-1"]) == 2
    assert "--max-queue" in capsys.readouterr().err
