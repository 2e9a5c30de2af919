"""Load and cancellation soak for `llmpress serve` (issue: serve acceptance).

  load:   keep C concurrent streaming completions in flight for D seconds; count failures;
          sample the server's RSS after warm-up and after the run (no growth allowed beyond
          a small tolerance); check /metrics against what the client sent and received.
  cancel: start C streams, drop every second one after its first few tokens, and check the
          server's running/waiting gauges fall back to 0 and every KV block is released
          (kv_cache_usage_perc 0), with aborted requests counted as such.

    .venv/bin/python benchmarks/serve_load.py --launch default --concurrency 64 --duration 240
    .venv/bin/python benchmarks/serve_load.py --target http://127.0.0.1:8000 --mode cancel

Prints a Markdown table and a final JSON line. Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import time

import httpx
import psutil

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a refrigerator works.",
           "List five uses of copper and say why.", "What is the difference between weather and climate?"]


def metrics(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        m = re.match(r'^(vllm:[a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+)$', line)
        if m:
            reason = re.search(r'finished_reason="(\w+)"', m.group(2) or "")
            out[m.group(1) + (f":{reason.group(1)}" if reason else "")] = float(m.group(3))
    return out


async def stream_one(client: httpx.AsyncClient, model: str, i: int, max_tokens: int, cancel_after: int | None) -> dict:
    body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.7,
            "seed": i, "stream": True, "stream_options": {"include_usage": True}}
    got, usage = 0, None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"ok": False, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"ok": False, "error": chunk["error"]["message"]}
            if chunk.get("choices"):
                got += 1
            if chunk.get("usage"):
                usage = chunk["usage"]
            if cancel_after is not None and got >= cancel_after:
                return {"ok": True, "cancelled": True, "chunks": got}  # leaving the block closes the stream
    return {"ok": usage is not None, "chunks": got, "usage": usage, "error": None if usage else "no usage chunk"}


async def run_load(url: str, model: str, concurrency: int, duration: float, max_tokens: int) -> list[dict]:
    results: list[dict] = []
    deadline = time.monotonic() + duration
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_connections=concurrency + 8)) as client:
        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < deadline:
                try:
                    results.append(await stream_one(client, model, i, max_tokens, None))
                except Exception as e:  # a transport failure is a failed request, never a crash
                    results.append({"ok": False, "error": repr(e)})
                i += concurrency
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return results


async def run_cancel(url: str, model: str, concurrency: int, max_tokens: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_connections=concurrency + 8)) as client:
        return await asyncio.gather(*(stream_one(client, model, i, max_tokens, 3 if i % 2 else None) for i in range(concurrency)))


def launch(model: str, concurrency: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llmpress.cli", "serve", model, "--port", str(port),
                             "--max-num-seqs", str(concurrency), "--served-model-name", "bench"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not come up in 300 s")


def rss_mb(pid: int | None) -> float | None:
    return psutil.Process(pid).memory_info().rss / 2**20 if pid else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--launch", metavar="MODEL")
    g.add_argument("--target", metavar="URL")
    ap.add_argument("--pid", type=int, help="server pid for RSS (with --target)")
    ap.add_argument("--mode", choices=["load", "cancel", "both"], default="both")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=240.0, help="load phase seconds (after the warm-up)")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds of load before the RSS baseline")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rss-tolerance-mb", type=float, default=24.0)
    a = ap.parse_args()

    proc, url, pid = None, a.target, a.pid
    if a.launch:
        proc, url = launch(a.launch, a.concurrency)
        pid = proc.pid
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    report: dict = {"url": url, "concurrency": a.concurrency, "checks": {}}
    try:
        if a.mode in ("load", "both"):
            asyncio.run(run_load(url, model, a.concurrency, a.warmup, a.max_tokens))  # warm-up: allocator and caches settle
            m0, rss0 = metrics(url), rss_mb(pid)
            t0 = time.monotonic()
            res = asyncio.run(run_load(url, model, a.concurrency, a.duration, a.max_tokens))
            wall = time.monotonic() - t0
            time.sleep(1.0)
            m1, rss1 = metrics(url), rss_mb(pid)
            ok = [r for r in res if r["ok"]]
            d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
            done = d.get("vllm:request_success_total:stop", 0) + d.get("vllm:request_success_total:length", 0)
            sent_prompt = sum(r["usage"]["prompt_tokens"] for r in ok)
            got_tokens = sum(r["usage"]["completion_tokens"] for r in ok)
            report["load"] = dict(requests=len(res), failed=len(res) - len(ok), wall_s=round(wall, 1),
                                  req_per_s=round(len(ok) / wall, 2), tok_per_s=round(got_tokens / wall, 1),
                                  rss_after_warmup_mb=rss0, rss_after_run_mb=rss1,
                                  metrics_finished=done, metrics_prompt_tokens=d.get("vllm:prompt_tokens_total"),
                                  metrics_generation_tokens=d.get("vllm:generation_tokens_total"),
                                  client_prompt_tokens=sent_prompt, client_completion_tokens=got_tokens,
                                  errors=sorted({r["error"] for r in res if not r["ok"]})[:5])
            report["checks"].update({
                "0 failed requests": len(ok) == len(res),
                "metrics finished == completed": done == len(ok),
                "metrics prompt tokens == client's": d.get("vllm:prompt_tokens_total") == sent_prompt,
                "metrics generation tokens == client's": d.get("vllm:generation_tokens_total") == got_tokens,
                "no RSS growth": rss0 is None or rss1 - rss0 <= a.rss_tolerance_mb,
            })
        if a.mode in ("cancel", "both"):
            m0 = metrics(url)
            res = asyncio.run(run_cancel(url, model, a.concurrency, a.max_tokens))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                m1 = metrics(url)
                if m1["vllm:num_requests_running"] == 0 and m1["vllm:num_requests_waiting"] == 0 and m1["vllm:kv_cache_usage_perc"] == 0:
                    break
                time.sleep(0.2)
            cancelled = sum(1 for r in res if r.get("cancelled"))
            aborted = m1.get("vllm:request_success_total:abort", 0) - m0.get("vllm:request_success_total:abort", 0)
            report["cancel"] = dict(streams=len(res), cancelled=cancelled, completed=sum(1 for r in res if r["ok"] and not r.get("cancelled")),
                                    running_after=m1["vllm:num_requests_running"], waiting_after=m1["vllm:num_requests_waiting"],
                                    kv_usage_after=m1["vllm:kv_cache_usage_perc"], aborts_counted=aborted)
            report["checks"].update({
                "cancel: every stream ok or cancelled": all(r["ok"] for r in res),
                "cancel: running and waiting back to 0": m1["vllm:num_requests_running"] == 0 and m1["vllm:num_requests_waiting"] == 0,
                "cancel: KV cache fully released": m1["vllm:kv_cache_usage_perc"] == 0,
                "cancel: aborts counted": aborted == cancelled,
            })
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)

    for phase in ("load", "cancel"):
        if phase in report:
            print(f"\n| {phase} | value |\n|---|---|")
            for k, v in report[phase].items():
                print(f"| {k} | {v} |")
    print("\n| check | result |\n|---|---|")
    for k, v in report["checks"].items():
        print(f"| {k} | {'pass' if v else 'FAIL'} |")
    print(json.dumps(report))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
