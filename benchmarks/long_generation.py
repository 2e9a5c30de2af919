"""Time per generated token along one long single-stream generation (issue 20: detokenization must not make it grow).

    python benchmarks/long_generation.py [MODEL] [--tokens 2048] [--window 256]

Runs LLMEngine.step() to completion for one greedy request with ignore_eos and prints the mean milliseconds per
token over the first and the last `window` tokens, and their ratio (1.0: flat). The attention over a longer
context costs more at the end whatever the detokenizer does (the KV cache read per token grows with it), so the
detokenize-and-stop-check part of each step (`LLMEngine._check_stop`, the same name before and after issue 20) is
timed on its own too: `detok_first_us` / `detok_last_us`.
"""
from __future__ import annotations

import argparse
import json
import time

from llmpress.engine import EngineConfig, LLMEngine, SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="default")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args()
    eng = LLMEngine(EngineConfig(model=args.model, max_model_len=args.tokens + 64, kv_cache_memory_bytes=512 << 20))
    eng.add_request("0", "Once upon a time", SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True))
    detok = []
    check_stop = eng._check_stop

    def timed_check_stop(seq, token):  # timing only: the engine's own method runs unchanged
        t = time.perf_counter()
        check_stop(seq, token)
        detok.append(time.perf_counter() - t)

    eng._check_stop = timed_check_stop
    times = []
    while eng.has_unfinished():
        t = time.perf_counter()
        eng.step()
        times.append(time.perf_counter() - t)
    decode = times[1:]  # the first step is the prefill
    first = sum(decode[: args.window]) / args.window * 1e3
    last = sum(decode[-args.window :]) / args.window * 1e3
    d_first = sum(detok[1 : args.window + 1]) / args.window * 1e6
    d_last = sum(detok[-args.window :]) / args.window * 1e6
    print(json.dumps({"tokens": len(decode) + 1, "first_ms": round(first, 2), "last_ms": round(last, 2),
                      "last_over_first": round(last / first, 2), "detok_first_us": round(d_first, 1),
                      "detok_last_us": round(d_last, 1), "detok_last_over_first": round(d_last / d_first, 2)}))


if __name__ == "__main__":
    main()
