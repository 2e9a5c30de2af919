"""`llmpress bench`: the cards' inference-performance tables for any OpenAI-compatible
server (ours, vLLM, anything) or one we launch.

For each profile (prompt/output tokens):
  single-stream: synchronous requests, one at a time -> median latency, TTFT, ITL; QPD.
  multi-stream:  "maximum throughput" = completed requests/s with the server saturated
                 (GuideLLM's `throughput` profile: `max_concurrency` requests kept in
                 flight), the figure GuideLLM's sweep tops out at; in `sweep` mode also
                 the highest constant rate whose completed rate keeps within 5% of the
                 offered rate. QPD from QPS.
`--base` benchmarks (or reuses cached results of) the base model the same way, giving the
cards' "average cost reduction".
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from .load import BenchTargetError, LoadSpec, RunResult, check_target, run_load, sweep_rates
from .workload import Profile, PromptMaker, WorkloadError, parse_profiles

MODES = ("synchronous", "concurrent", "constant", "poisson", "throughput", "sweep")


@dataclass(frozen=True)
class BenchConfig:
    target: str | None = None  # http://host:port/v1 of a running server
    launch: str | None = None  # a model to serve (and stop afterwards)
    base: str | None = None  # base model (launched) for the cost-reduction column
    base_target: str | None = None  # ... or the base model's running server
    engine: str = "embedded"  # what --launch starts: embedded | vllm
    profiles: str | None = None  # "256/128,512/256"; default: the cards' eight
    scale: float = 1.0  # multiply every profile's token counts (CPU-sized runs)
    mode: str = "sweep"  # how multi-stream is measured; synchronous alone skips it
    concurrency: int = 16  # for concurrent mode, and the saturation level for throughput
    rate: float | None = None  # req/s for constant / poisson
    sweep_points: int = 3
    max_seconds: float = 60.0  # per load setting
    max_requests: int | None = None  # per load setting
    sync_requests: int = 5  # single-stream requests per profile
    gpu: str | None = None  # price from the cards' table: A6000 | A100 | H100
    cost_per_hour: float | None = None  # or an explicit $/hour
    max_model_len: int | None = None
    dtype: str = "auto"  # launched servers' --dtype (auto | float32 | bfloat16)
    prefill_dtype: str = "auto"  # launched embedded servers' --prefill-dtype (auto | float32 | bfloat16)
    api_key: str | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if not (self.target or self.launch):
            raise WorkloadError("give --target URL (a running server) or --launch MODEL")
        if self.target and self.launch:
            raise WorkloadError("give --target or --launch, not both")
        if self.mode not in MODES:
            raise WorkloadError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode in ("constant", "poisson") and not self.rate:
            raise WorkloadError(f"--mode {self.mode} needs --rate REQ_PER_S")
        for name in ("rate", "concurrency", "max_seconds", "max_requests", "sync_requests", "sweep_points", "cost_per_hour"):
            v = getattr(self, name, None)
            if v is not None and not v > 0 and not (name == "sweep_points" and v == 0):
                raise WorkloadError(f"--{name.replace('_', '-')} {v}: must be positive")
        if self.scale <= 0:
            raise WorkloadError(f"scale must be positive, got {self.scale}")
        if self.engine not in ("embedded", "vllm"):
            raise WorkloadError(f"engine {self.engine!r} is not embedded or vllm")
        for name in ("dtype", "prefill_dtype"):
            flag, v = "--" + name.replace("_", "-"), getattr(self, name)
            if v not in ("auto", "float32", "bfloat16"):
                raise WorkloadError(f"{flag} {v!r} is not auto, float32 or bfloat16")
            if v != "auto" and not (self.launch or self.base):
                raise WorkloadError(f"{flag} {v}: sets the servers bench launches; a --target server keeps its own "
                                    f"(restart it with {flag} {v})")
        if self.prefill_dtype != "auto" and self.engine == "vllm":
            raise WorkloadError(f"--prefill-dtype {self.prefill_dtype}: an embedded-engine CPU setting; vLLM runs every "
                                "GEMM in --dtype (leave --prefill-dtype out)")


def price(cfg: BenchConfig) -> tuple[float | None, str]:
    from .cost import PRICES_SOURCE, derive_prices

    if cfg.cost_per_hour:
        return cfg.cost_per_hour, "given (--cost-per-hour)"
    if cfg.gpu:
        prices = derive_prices()
        if cfg.gpu not in prices:
            raise WorkloadError(f"no price for GPU {cfg.gpu!r}; known: {', '.join(prices)}; or pass --cost-per-hour")
        return prices[cfg.gpu]["usd_per_hour"], f"{cfg.gpu}, {PRICES_SOURCE}"
    return None, "no price (pass --cost-per-hour or --gpu): QPD not computed"


class Server:
    """`llmpress serve MODEL` (or vLLM's) on a free local port, stopped on exit."""

    def __init__(self, model: str, engine: str, max_model_len: int | None, max_num_seqs: int, dtype: str = "auto",
                 prefill_dtype: str = "auto"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "llmpress.cli", "serve", model, "--port", str(self.port), "--engine", engine,
               "--max-num-seqs", str(max_num_seqs)]
        if max_model_len:
            cmd += ["--max-model-len", str(max_model_len)]
        if dtype != "auto":
            cmd += ["--dtype", dtype]
        if prefill_dtype != "auto":
            cmd += ["--prefill-dtype", prefill_dtype]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "Server":
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchTargetError(f"the server exited ({self.proc.returncode}): {self.proc.stderr.read().decode()[-600:]}")
            try:
                check_target(self.url, timeout=1)
                return self
            except BenchTargetError:
                time.sleep(0.5)
        raise BenchTargetError("the launched server did not come up in 600 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _summary(run: RunResult) -> dict:
    import numpy as np

    ok = [r for r in run.counted() if r.error is None]
    errors = [r for r in run.records if r.error]
    span = (run.window[1] - run.window[0]) or run.duration_s

    def dist(values: list[float]) -> dict | None:
        if not values:
            return None
        a = np.asarray(values)
        return {"mean": float(a.mean()), "median": float(np.median(a)), **{f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 95, 99)}}

    out_tokens = sum(r.output_tokens or 0 for r in ok)
    return {"mode": run.mode, "setting": run.setting, "requests": len(run.records), "counted": len(ok), "errors": len(errors),
            "error_messages": sorted({r.error for r in errors})[:5], "duration_s": run.duration_s,
            "requests_per_s": len(ok) / span if span > 0 else 0.0, "output_tokens_per_s": out_tokens / span if span > 0 else 0.0,
            "ttft_s": dist([r.ttft for r in ok if r.ttft is not None]), "itl_s": dist([r.itl for r in ok if r.itl is not None]),
            "latency_s": dist([r.latency for r in ok]),
            "prompt_tokens": sorted({r.prompt_tokens for r in ok if r.prompt_tokens is not None}),
            "output_tokens": sorted({r.output_tokens for r in ok if r.output_tokens is not None})}


def bench_model(cfg: BenchConfig, url: str, profiles: list[Profile], progress: bool) -> dict:
    """Every profile against one server: single-stream, then multi-stream per cfg.mode."""
    from transformers import AutoTokenizer

    model = check_target(url, cfg.api_key)
    tok_path = _tokenizer_source(cfg, model)
    maker = PromptMaker(AutoTokenizer.from_pretrained(tok_path))
    results = {}
    # Per request, not per profile: one load setting runs up to max_seconds, and a bar that moves
    # once per profile sat still for most of a minute. The total is open (settings are time-bounded).
    # closed on the way out too: on Ctrl-C a bar left open is redrawn by its finalizer after the one-line message
    with tqdm(desc="bench", disable=not progress, unit="req") as bar:
        for n, prof in enumerate(profiles, 1):
            prompts = [maker.make(prof.prompt_tokens, i) for i in range(64)]
            pick = lambda i: prompts[i % len(prompts)]  # noqa: E731
            runs = {}

            def go(spec: LoadSpec) -> RunResult:
                bar.set_postfix_str(f"profile {n}/{len(profiles)} {prof.label}, {spec.mode}"
                                    + (f"@{spec.setting:g}" if spec.setting is not None else ""))
                return asyncio.run(run_load(url, model, pick, prof.output_tokens, spec, cfg.api_key,
                                            on_done=lambda rec: bar.update(1)))

            go(LoadSpec("synchronous", None, cfg.max_seconds, 1, warmup=0, cooldown=0))  # warm-up, not counted
            sync = go(LoadSpec("synchronous", None, cfg.max_seconds, cfg.sync_requests, warmup=0, cooldown=0))
            runs["synchronous"] = _summary(sync)
            if cfg.mode != "synchronous":
                kinds = {"concurrent": [("concurrent", cfg.concurrency)], "throughput": [("throughput", cfg.concurrency)],
                         "constant": [("constant", cfg.rate)], "poisson": [("poisson", cfg.rate)],
                         "sweep": [("throughput", cfg.concurrency)]}[cfg.mode]
                for mode, setting in kinds:
                    runs[f"{mode}@{setting:g}"] = _summary(go(LoadSpec(mode, setting, cfg.max_seconds, cfg.max_requests, seed=cfg.seed)))
                if cfg.mode == "sweep":
                    sat = runs[f"throughput@{cfg.concurrency:g}"]["requests_per_s"]
                    for r in sweep_rates(runs["synchronous"]["requests_per_s"], sat, cfg.sweep_points):
                        runs[f"constant@{r:.3g}"] = _summary(go(LoadSpec("constant", r, cfg.max_seconds, cfg.max_requests, seed=cfg.seed)))
            results[prof.label] = {"profile": asdict(prof), "runs": runs, **_headline(runs)}
    return {"model": model, "profiles": results}


def _headline(runs: dict) -> dict:
    sync = runs["synchronous"]
    multi = [(k, v) for k, v in runs.items() if k != "synchronous"]
    sat = max((v["requests_per_s"] for k, v in multi if k.startswith(("throughput", "concurrent")) and v["counted"]), default=None)
    sustained = [float(k.split("@")[1]) for k, v in multi if k.startswith(("constant", "poisson"))
                 and v["errors"] == 0 and v["requests_per_s"] >= 0.95 * float(k.split("@")[1])]
    return {"latency_s": sync["latency_s"]["median"] if sync["latency_s"] else None,
            "max_qps": sat, "max_sustained_rate": max(sustained) if sustained else None,
            "errors": sum(v["errors"] for v in runs.values())}


def _tokenizer_source(cfg: BenchConfig, served: str) -> str:
    from ..models import resolve_model

    for cand in (cfg.launch, served):
        if cand:
            try:
                return str(resolve_model(cand))
            except Exception:  # a served id need not be a local folder
                continue
    raise WorkloadError(f"cannot find a tokenizer for {served!r}; pass --launch MODEL or a local folder as the served name")


def cache_key(cfg: BenchConfig, model_path: str, profiles: list[Profile]) -> str:
    from ..models import model_fingerprint

    keep = {k: v for k, v in asdict(cfg).items() if k in ("engine", "scale", "mode", "concurrency", "rate", "sweep_points",
                                                           "max_seconds", "max_requests", "sync_requests", "max_model_len",
                                                           "dtype", "prefill_dtype")}
    blob = json.dumps({"model": model_fingerprint(Path(model_path)), "profiles": [asdict(p) for p in profiles],
                       "settings": keep, "host": os.uname().nodename}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def run(cfg: BenchConfig, output: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    from ..checkpoint.shards import atomic_output_dir
    from ..models import cache_dir, resolve_model
    from . import report

    profiles = [p.scaled(cfg.scale) for p in parse_profiles(cfg.profiles)]
    limit = cfg.max_model_len
    skipped = [p for p in profiles if limit and p.prompt_tokens + p.output_tokens > limit]
    profiles = [p for p in profiles if p not in skipped]
    if not profiles:
        raise WorkloadError(f"no profile fits max_model_len {limit}")
    usd, price_note = price(cfg)
    for url in (cfg.target, cfg.base_target):  # a dead URL fails now, before any output exists
        if url:
            check_target(url, cfg.api_key)
    out: dict = {"config": asdict(cfg), "price_usd_per_hour": usd, "price_source": price_note,
                 "skipped_profiles": [{"profile": p.label, "why": f"{p.prompt_tokens}+{p.output_tokens} tokens > max_model_len {limit}"}
                                      for p in skipped], "models": {}}
    with atomic_output_dir(output, overwrite) as tmp:
        sides = [("model", cfg.launch, cfg.target)] + ([("base", cfg.base, cfg.base_target)] if cfg.base or cfg.base_target else [])
        for side, launch, target in sides:
            key_path = cache_dir() / "bench" / f"{cache_key(cfg, str(resolve_model(launch)), profiles)}.json" if (side == "base" and launch) else None
            if key_path and key_path.is_file():
                out["models"][side] = {**json.loads(key_path.read_text()), "cached": True}
                continue
            if launch:
                with Server(launch, cfg.engine, cfg.max_model_len, max(cfg.concurrency, 1), cfg.dtype, cfg.prefill_dtype) as srv:
                    res = bench_model(replace(cfg, launch=launch), srv.url, profiles, progress)
            else:
                res = bench_model(replace(cfg, launch=None), target, profiles, progress)
            out["models"][side] = res
            if key_path:
                key_path.parent.mkdir(parents=True, exist_ok=True)
                key_path.write_text(json.dumps(res))
        report.write(out, tmp, usd)
    return out
