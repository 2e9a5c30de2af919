"""Load generation against any OpenAI-compatible /v1/completions endpoint, streaming, with
GuideLLM's scheduling profiles: synchronous, concurrent N, constant rate, Poisson rate,
throughput (saturate), and sweep (synchronous -> throughput -> rates in between).

Per request: time to first token (first streamed text), inter-token latency (GuideLLM's
definition: (latency - TTFT) / (output tokens - 1)), end-to-end latency, and the token
counts the server reports in its usage chunk. Requests that start in the warm-up window
or finish after the cool-down cut are run but excluded from the statistics. Errors and
timeouts are counted, with their messages, never dropped.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx
from ..errors import LlmpressError


@dataclass
class RequestRecord:
    start: float
    end: float = 0.0
    ttft: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    chunks: int = 0
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def itl(self) -> float | None:
        if self.ttft is None or not self.output_tokens or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


@dataclass
class RunResult:
    mode: str
    setting: float | None  # concurrency or rate (req/s)
    duration_s: float
    records: list[RequestRecord] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)  # statistics window (absolute monotonic times)

    def counted(self) -> list[RequestRecord]:
        a, b = self.window
        return [r for r in self.records if r.start >= a and r.end <= b]

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "records"}
        d["records"] = [{**asdict(r), "latency": r.latency, "itl": r.itl} for r in self.records]
        return d


class BenchTargetError(LlmpressError, RuntimeError):
    """The target does not answer: the message names the URL and the fix."""


def check_target(base_url: str, api_key: str | None = None, timeout: float = 5.0) -> str:
    """The served model id; fails fast with a clear message on a dead or wrong URL."""
    try:
        r = httpx.get(f"{base_url.rstrip('/')}/models", headers=_headers(api_key), timeout=timeout)
    except httpx.HTTPError as e:
        raise BenchTargetError(f"no OpenAI-compatible server at {base_url} ({type(e).__name__}: {e}); "
                               "start one (llmpress serve MODEL) or pass --launch MODEL") from None
    if r.status_code != 200:
        raise BenchTargetError(f"{base_url}/models answered HTTP {r.status_code}: {r.text[:200]}")
    data = r.json().get("data") or []
    if not data:
        raise BenchTargetError(f"{base_url}/models lists no model")
    return data[0]["id"]


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, timeout: float) -> RequestRecord:
    rec = RequestRecord(start=time.monotonic())
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    async def stream() -> None:
        async with client.stream("POST", "/completions", json=body) as r:
            if r.status_code != 200:
                rec.error = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    rec.error = str(chunk["error"].get("message", chunk["error"]))[:200]
                    return
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    rec.chunks += 1
                    if rec.ttft is None:
                        rec.ttft = time.monotonic() - rec.start
                if chunk.get("usage"):
                    rec.prompt_tokens = chunk["usage"].get("prompt_tokens")
                    rec.output_tokens = chunk["usage"].get("completion_tokens")

    try:
        await asyncio.wait_for(stream(), timeout)
        if rec.error is None and rec.output_tokens is None:  # a server without usage in streams: count chunks
            rec.output_tokens = rec.chunks
    except asyncio.TimeoutError:
        rec.error = f"timeout after {timeout:g} s"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        rec.error = f"{type(e).__name__}: {e}"[:200]
    finally:
        rec.end = time.monotonic()
    return rec


@dataclass(frozen=True)
class LoadSpec:
    mode: str  # synchronous | concurrent | constant | poisson | throughput
    setting: float | None = None  # concurrency (concurrent/throughput) or rate in req/s (constant/poisson)
    max_seconds: float = 60.0
    max_requests: int | None = None
    warmup: float = 0.1  # fraction of the run excluded at the start
    cooldown: float = 0.1  # ... and at the end
    request_timeout: float = 600.0
    seed: int = 42


async def run_load(base_url: str, model: str, prompts: Callable[[int], str], max_tokens: int, spec: LoadSpec,
                   api_key: str | None = None, on_done: Callable[[RequestRecord], None] | None = None) -> RunResult:
    """Run one load setting; `prompts(i)` gives the i-th prompt."""
    concurrency = {"synchronous": 1, "concurrent": spec.setting, "throughput": spec.setting or 64}.get(spec.mode)
    result = RunResult(spec.mode, spec.setting, 0.0)
    limits = httpx.Limits(max_connections=int(concurrency or 256) + 8, max_keepalive_connections=int(concurrency or 256) + 8)
    t0 = time.monotonic()
    deadline = t0 + spec.max_seconds
    issued = 0

    def next_index() -> int | None:
        nonlocal issued
        if time.monotonic() >= deadline or (spec.max_requests is not None and issued >= spec.max_requests):
            return None
        issued += 1
        return issued - 1

    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=_headers(api_key), limits=limits,
                                 timeout=httpx.Timeout(spec.request_timeout)) as client:
        async def fire(i: int) -> None:
            rec = await one_request(client, model, prompts(i), max_tokens, spec.request_timeout)
            result.records.append(rec)
            if on_done:
                on_done(rec)

        if concurrency is not None:
            async def worker() -> None:
                while (i := next_index()) is not None:
                    await fire(i)
            await asyncio.gather(*(worker() for _ in range(int(concurrency))))
        else:  # open loop: constant or Poisson arrivals, whatever the server's pace
            rng = random.Random(spec.seed)
            tasks, t_next = [], t0
            while (i := next_index()) is not None:
                gap = 1.0 / spec.setting if spec.mode == "constant" else rng.expovariate(spec.setting)
                t_next += gap
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
                tasks.append(asyncio.create_task(fire(i)))
            await asyncio.gather(*tasks)
    t1 = time.monotonic()
    result.duration_s = t1 - t0
    span = t1 - t0
    # Leave out the ramp-up and drain only when the run had several waves of requests: with
    # one or two waves (slow requests, short run) every completion falls in the drain, and the
    # window would count nothing.
    waves = len(result.records) / concurrency if concurrency else len(result.records)
    result.window = (t0 + spec.warmup * span, t1 - spec.cooldown * span) if len(result.records) >= 5 and waves >= 3 else (t0, t1)
    return result


def sweep_rates(sync_rps: float, max_rps: float, points: int) -> list[float]:
    """GuideLLM's sweep: `points` constant rates evenly spaced strictly between the
    synchronous rate and the saturation throughput."""
    if points <= 0 or max_rps <= sync_rps:
        return []
    step = (max_rps - sync_rps) / (points + 1)
    return [sync_rps + step * (k + 1) for k in range(points)]
