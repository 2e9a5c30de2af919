"""Cross-check `llmpress bench` against GuideLLM 0.8.1 on the same server.

    python3 -m venv /work/venvs/guidellm
    /work/venvs/guidellm/bin/pip install torch==2.13.0 guidellm==0.8.1   # CPU torch first
    .venv/bin/python benchmarks/guidellm_crosscheck.py out/compare/W4A16/llmpress --profile 128/64

Serves MODEL once, then measures one synchronous and one concurrent setting with our load
generator and with GuideLLM (synthetic text of the same token counts, /v1/completions,
streaming), and prints mean request latency and output tokens/s of both, with the ratio.

On a small machine the client's own CPU use slows a CPU-bound server, and GuideLLM's client
(worker processes, per-token pydantic objects) costs more than ours, so the concurrent
setting would measure the clients, not the server. `--pin` (the default with 2+ cores) runs
the server on core 0 with one thread and both clients on the other cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from llmpress.bench.load import LoadSpec, run_load
from llmpress.bench.run import Server
from llmpress.bench.workload import PromptMaker
from llmpress.models import resolve_model


def ours(url: str, model: str, maker: PromptMaker, p: int, o: int, streams: int, n: int) -> dict:
    prompts = [maker.make(p, i) for i in range(32)]
    mode = "synchronous" if streams == 1 else "concurrent"
    asyncio.run(run_load(url, model, lambda i: prompts[i % 32], o, LoadSpec(mode, streams, 600, streams)))  # warm-up
    r = asyncio.run(run_load(url, model, lambda i: prompts[i % 32], o, LoadSpec(mode, streams, 600, n, warmup=0, cooldown=0)))
    ok = [x for x in r.records if not x.error]
    return {"latency_s": sum(x.latency for x in ok) / len(ok), "output_tok_s": sum(x.output_tokens for x in ok) / r.duration_s,
            "requests": len(r.records), "errors": len(r.records) - len(ok)}


def guidellm(url: str, model: str, tokenizer: str, p: int, o: int, streams: int, n: int, exe: str) -> dict:
    out = Path(tempfile.mkdtemp()) / "guidellm.json"
    profile = {"kind": "synchronous"} if streams == 1 else {"kind": "concurrent", "streams": [streams]}
    scenario = {"spec": {
        "backend": {"kind": "openai_http", "target": url.removesuffix("/v1"), "model": model, "request_format": "/v1/completions"},
        "profile": profile,
        "data": [{"kind": "synthetic_text", "prompt_tokens": p, "output_tokens": o}],
        "tokenizer": {"kind": "hf_auto", "model": tokenizer},
        "constraints": [{"kind": "max_requests", "count": n}],
        "outputs": [{"kind": "json", "path": str(out)}],
    }}
    sc = out.with_name("scenario.json")
    sc.write_text(json.dumps(scenario))
    cmd = [exe, "run", "-c", str(sc), "--disable-console-interactive"]
    p_ = subprocess.run(cmd, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if p_.returncode != 0 or not out.is_file():
        sys.exit(f"guidellm failed ({p_.returncode}):\n{p_.stdout[-2000:]}\n{p_.stderr[-3000:]}")
    return summarize_guidellm(json.loads(out.read_text()))


def summarize_guidellm(report: dict) -> dict:
    b = report["benchmarks"][0]
    m = b["metrics"]

    def mean(name: str) -> float:
        v = m[name]
        v = v.get("successful", v) if isinstance(v, dict) else v
        return float(v["mean"])

    return {"latency_s": mean("request_latency"), "output_tok_s": mean("output_tokens_per_second"),
            "requests": b.get("request_totals", {}).get("successful"), "errors": b.get("request_totals", {}).get("errored")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--profile", default="128/64")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--guidellm", default="/work/venvs/guidellm/bin/guidellm")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2,
                    help="server on core 0 (one thread), clients on the others (default with 2+ cores)")
    a = ap.parse_args()
    p, o = (int(x) for x in a.profile.split("/"))
    path = str(resolve_model(a.model))
    rows = []
    cores = sorted(os.sched_getaffinity(0))
    pin = a.pin and len(cores) >= 2
    if pin:  # the server inherits core 0, then this process (and GuideLLM) moves off it
        os.sched_setaffinity(0, cores[:1])
        os.environ["OMP_NUM_THREADS"] = "1"
    srv = Server(path, "embedded", None, max(a.streams, 1))
    if pin:
        os.sched_setaffinity(0, cores[1:])
        os.environ.pop("OMP_NUM_THREADS")
        print(f"server pinned to core {cores[0]}, clients to {cores[1:]}", file=sys.stderr)
    with srv:
        from llmpress.bench.load import check_target

        model = check_target(srv.url)
        maker = PromptMaker(AutoTokenizer.from_pretrained(path))
        for streams in (1, a.streams):
            mine = ours(srv.url, model, maker, p, o, streams, a.requests)
            theirs = guidellm(srv.url, model, path, p, o, streams, a.requests, a.guidellm)
            rows.append((streams, mine, theirs))
    print(f"\n{a.model}, profile {a.profile}, {a.requests} requests per setting\n")
    print("| setting | llmpress latency s | GuideLLM latency s | ratio | llmpress out tok/s | GuideLLM out tok/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for streams, m, g in rows:
        name = "synchronous" if streams == 1 else f"concurrent {streams}"
        print(f"| {name} | {m['latency_s']:.3f} | {g['latency_s']:.3f} | {m['latency_s'] / g['latency_s']:.3f} "
              f"| {m['output_tok_s']:.1f} | {g['output_tok_s']:.1f} | {m['output_tok_s'] / g['output_tok_s']:.3f} |")
    print(json.dumps([{"streams": s, "llmpress": m, "guidellm": g} for s, m, g in rows]))


if __name__ == "__main__":
    main()
