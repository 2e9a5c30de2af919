"""Prometheus metrics under vLLM's names, in the text exposition format (0.0.4).

Written by hand rather than with prometheus_client: a dozen series do not justify a
dependency, and one lock makes them safe to update from the engine thread while the
event loop renders a scrape. Every series carries `model_name`, as vLLM's do, so
dashboards built for vLLM work unchanged.
"""
from __future__ import annotations

import bisect
import math
import threading

# vLLM's bucket boundaries, so histograms from the two servers can be compared.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
               20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
FINISH_REASONS = ("stop", "length", "abort")


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cum = [], 0
        for bound, c in zip((*self.buckets, math.inf), self.counts):
            cum += c
            out.append(f'{name}_bucket{{{labels},le="{_num(bound)}"}} {cum}')
        out += [f"{name}_sum{{{labels}}} {_num(self.sum)}", f"{name}_count{{{labels}}} {self.count}"]
        return out


class Metrics:
    """Counters and histograms fed by the engine thread; gauges set after every step."""

    def __init__(self, model_name: str):
        self.labels = f'model_name="{_escape(model_name)}"'
        self.lock = threading.Lock()
        self.num_running = 0
        self.num_waiting = 0
        self.kv_usage = 0.0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.finished = dict.fromkeys(FINISH_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.tpot = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.request_prompt = Histogram(TOKEN_BUCKETS)
        self.request_generation = Histogram(TOKEN_BUCKETS)

    # -- updates (engine thread) ---------------------------------------------------------
    def set_gauges(self, running: int, waiting: int, kv_usage: float) -> None:
        self.num_running, self.num_waiting, self.kv_usage = running, waiting, kv_usage  # plain stores: atomic

    def add_prompt(self, n: int) -> None:
        with self.lock:
            self.prompt_tokens += n

    def on_tokens(self, new: int, itl: list[float], first_token_s: float | None) -> None:
        """One request's progress in one step: `new` tokens over its samples, the gaps
        since each sample's previous token, and (once) the time to its first token."""
        with self.lock:
            self.generation_tokens += new
            for v in itl:
                self.itl.observe(v)
            if first_token_s is not None:
                self.ttft.observe(first_token_s)

    def on_finished(self, reason: str, e2e_s: float, prompt_tokens: int, output_tokens: int,
                    decode_s: float | None, preemptions: int) -> None:
        with self.lock:
            self.finished[reason if reason in self.finished else "stop"] += 1
            self.e2e.observe(e2e_s)
            self.request_prompt.observe(prompt_tokens)
            self.request_generation.observe(output_tokens)
            if decode_s is not None and output_tokens > 1:
                self.tpot.observe(decode_s / (output_tokens - 1))
            self.preemptions += preemptions

    # -- exposition (event loop) ---------------------------------------------------------
    def render(self) -> str:
        L = self.labels
        out: list[str] = []

        def head(name: str, kind: str, doc: str) -> None:
            out.extend((f"# HELP {name} {doc}", f"# TYPE {name} {kind}"))

        with self.lock:
            for name, doc, v in (("vllm:num_requests_running", "Requests in the running batch.", self.num_running),
                                 ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", self.num_waiting),
                                 ("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", self.kv_usage)):
                head(name, "gauge", doc)
                out.append(f"{name}{{{L}}} {_num(v)}")
            for name, doc, v in (("vllm:prompt_tokens", "Prompt tokens admitted.", self.prompt_tokens),
                                 ("vllm:generation_tokens", "Tokens generated.", self.generation_tokens),
                                 ("vllm:num_preemptions", "Sequences preempted (recomputed later).", self.preemptions)):
                head(name, "counter", doc)
                out.append(f"{name}_total{{{L}}} {v}")
            head("vllm:request_success", "counter", "Finished requests by finish reason.")
            out += [f'vllm:request_success_total{{{L},finished_reason="{r}"}} {c}' for r, c in self.finished.items()]
            for name, doc, h in (
                ("vllm:time_to_first_token_seconds", "Arrival to first generated token.", self.ttft),
                ("vllm:inter_token_latency_seconds", "Gap between successive tokens of a sequence.", self.itl),
                ("vllm:request_time_per_output_token_seconds", "Mean gap between tokens, per request.", self.tpot),
                ("vllm:e2e_request_latency_seconds", "Arrival to last token.", self.e2e),
                ("vllm:request_prompt_tokens", "Prompt length per finished request.", self.request_prompt),
                ("vllm:request_generation_tokens", "Generated tokens per finished request.", self.request_generation),
            ):
                head(name, "histogram", doc)
                out += h.lines(name, L)
        return "\n".join(out) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
