"""Ctrl-C (SIGINT) in any verb: one line, exit code 130, no traceback, nothing half-written left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest


def interrupt_when(argv: list[str], marker: str, timeout: float = 240, signals: int = 1, gap: float = 0.5,
                   then=None) -> tuple[int, str]:
    """Start `llmpress ARGV`, wait until stderr shows `marker`, call `then()`, send SIGINT `signals` times;
    (exit code, stderr)."""
    # its own process group, signalled whole, as a terminal's Ctrl-C does (bench's launched servers included)
    p = subprocess.Popen([sys.executable, "-m", "llmpress.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    buf: list[str] = []
    reader = threading.Thread(target=lambda: buf.extend(iter(lambda: p.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while marker not in "".join(buf):
        assert p.poll() is None, f"exited {p.returncode} before {marker!r}: {''.join(buf)[-2000:]}"
        assert time.monotonic() < deadline, "".join(buf)[-2000:]
        time.sleep(0.05)
    if then is not None:
        then()
    for _ in range(signals):
        os.killpg(p.pid, signal.SIGINT)
        time.sleep(gap)
    p.wait(timeout=60)
    reader.join(timeout=10)
    return p.returncode, "".join(buf)


def _last_line(err: str) -> str:
    return err.replace("\r", "\n").strip().splitlines()[-1]


def test_compress(default_model, tmp_path):
    code, err = interrupt_when(["compress", str(default_model), "--group-size", "64", "--num-samples", "16",
                                "--max-seq-len", "64", "--output", str(tmp_path / "o")], "compress W4A16")
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert _last_line(err) == "llmpress compress: interrupted"
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_eval(tiny_llama, tmp_path):
    code, err = interrupt_when(["eval", str(tiny_llama), "--tasks", "mmlu,ppl", "--limit", "20", "--output", str(tmp_path / "o")],
                               "eval:")
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert _last_line(err) == "llmpress eval: interrupted"
    assert not (tmp_path / "o").exists()


def test_bench(tiny_llama, tmp_path):
    code, err = interrupt_when(["bench", "--launch", str(tiny_llama), "--profiles", "64/32", "--mode", "synchronous",
                                "--output", str(tmp_path / "o")], "bench")
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert _last_line(err) == "llmpress bench: interrupted"



def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream_in_flight(port: int, tokens: int):
    """A long streamed completion, left running: uvicorn's graceful shutdown waits for it."""
    import http.client
    import json

    def client():
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            c.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": tokens, "ignore_eos": True,
                                                             "stream": True}), {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read(64)  # the stream has started
            got.set()
            r.read()
        except (OSError, http.client.HTTPException):  # the server went away mid-stream: expected here
            got.set()

    got = threading.Event()
    threading.Thread(target=client, daemon=True).start()
    assert got.wait(60)


@pytest.mark.parametrize("signals", [1, 2])
def test_serve(tiny_llama, signals):
    """One Ctrl-C: graceful shutdown; a second one during it: exit at once; either way one line, 130."""
    port = _free_port()
    code, err = interrupt_when(["serve", str(tiny_llama), "--port", str(port)], "Uvicorn running",
                               signals=signals, gap=1.0 if signals == 2 else 0, then=lambda: _stream_in_flight(port, 60 if signals == 1 else 1000))
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert _last_line(err).startswith("llmpress serve: interrupted")


def test_bench_progress_moves_per_request(tiny_llama, tmp_path):
    """The bar counts requests as they finish (1 warm-up + 3 timed), not profiles."""
    import re

    p = subprocess.run([sys.executable, "-m", "llmpress.cli", "bench", "--launch", str(tiny_llama), "--profiles", "16/4",
                        "--mode", "synchronous", "--sync-requests", "3", "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    counts = [int(m) for m in re.findall(r"bench: (\d+)req", p.stderr)]
    assert counts and max(counts) == 4, p.stderr[-3000:]  # tqdm may skip redraws between requests, never the last
