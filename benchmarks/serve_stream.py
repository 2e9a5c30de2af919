"""Single-stream decode speed through `llmpress serve` against the same model in-process.

    .venv/bin/python benchmarks/serve_stream.py [MODEL ...] [--tokens 200] [--repeats 3]

For each model: the engine in this process (LLMEngine.step on the main thread), then
`llmpress serve MODEL` in a subprocess with one streamed /v1/completions request at a time
(greedy, ignore_eos), decode tok/s from the first streamed token to the last. The two should
match: the server adds HTTP and SSE framing per token, not a slower engine. Prints a table.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPT = "Once upon a time"


def in_process(model: str, tokens: int, repeats: int) -> float:
    from llmpress.engine import EngineConfig, LLMEngine, SamplingParams

    eng = LLMEngine(EngineConfig(model=model, max_num_seqs=4, kv_cache_memory_bytes=256 << 20))
    ids = eng.tokenizer(PROMPT)["input_ids"]
    rates = []
    for r in range(repeats + 1):  # the first run warms up
        eng.add_request(f"r{r}", ids, SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True))
        eng.step()  # prefill + first token
        t, n = time.perf_counter(), 0
        while eng.has_unfinished():
            eng.step()
            n += 1
        if r:
            rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def through_server(model: str, tokens: int, repeats: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llmpress.cli", "serve", model, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"llmpress serve {model} exited with {proc.returncode}")
            time.sleep(0.5)
        name = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
        body = {"model": name, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True}
        rates = []
        for r in range(repeats + 1):
            first, n = None, 0
            with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        first = first or time.perf_counter()
                        n += 1
            if r:
                rates.append((n - 1) / (time.perf_counter() - first))
        return statistics.median(rates)
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["default"])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print("| model | in-process tok/s | through the server tok/s | ratio |\n|---|---|---|---|")
    for m in a.models:
        here, served = in_process(m, a.tokens, a.repeats), through_server(m, a.tokens, a.repeats)
        print(f"| {m} | {here:.1f} | {served:.1f} | {served / here:.2f} |", flush=True)


if __name__ == "__main__":
    main()
