"""Embedded-engine speed: prefill tok/s, decode tok/s at 1 / 8 / 16 / 32 concurrent
sequences, resident weight bytes, achieved weight GB/s at batch 1, peak RSS.

    .venv/bin/python benchmarks/engine_speed.py [MODEL ...] [--prompt-len 128] [--gen 64]

Each model runs in its own subprocess (clean RSS). Decode time is measured from the
step after every sequence has its first token to the last step, so prefill does not
count against decode. Prints a Markdown table and a final JSON line.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(model: str, prompt_len: int, gen: int, batches: list[int], dtype: str) -> dict:
    import psutil
    import torch

    from llmpress.engine import EngineConfig, LLMEngine, SamplingParams

    t0 = time.time()
    eng = LLMEngine(EngineConfig(model=model, dtype=dtype, max_num_seqs=max(batches), max_num_batched_tokens=512,
                                 kv_cache_memory_bytes=1 << 30))
    load_s = time.time() - t0
    wb = eng.model.weight_bytes()
    g = torch.Generator().manual_seed(0)
    vocab = eng.cfg.vocab_size

    def prompt(n: int) -> list[int]:
        return torch.randint(100, min(vocab, 30000), (n,), generator=g).tolist()

    # warm-up (kernel first calls, rope tables)
    eng.add_request("w", prompt(32), SamplingParams(max_tokens=4, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    # prefill: one 512-token prompt, time to first token
    eng.add_request("p", prompt(512), SamplingParams(max_tokens=1, ignore_eos=True))
    t = time.perf_counter()
    while eng.has_unfinished():
        eng.step()
    prefill_tps = 512 / (time.perf_counter() - t)
    res = {"model": model, "load_s": round(load_s, 1), "prefill_tok_s": round(prefill_tps, 1), "weight_bytes": wb, "decode": {}}
    for b in batches:
        for i in range(b):
            eng.add_request(f"b{b}-{i}", prompt(prompt_len), SamplingParams(temperature=0, max_tokens=gen, ignore_eos=True))
        seqs = [s for r in list(eng.requests.values()) for s in r]
        while any(not s.output_ids for s in seqs):
            eng.step()
        start_tokens = sum(len(s.output_ids) for s in seqs)
        t = time.perf_counter()
        steps = 0
        while eng.has_unfinished():
            eng.step()
            steps += 1
        dt = time.perf_counter() - t
        tokens = sum(len(s.output_ids) for s in seqs) - start_tokens
        res["decode"][b] = {"tok_s": round(tokens / dt, 1), "step_ms": round(1000 * dt / max(steps, 1), 2)}
    per_step = wb["linears"] + wb["norms"] + (wb["lm_head"] or wb["embedding"])
    res["gb_s_at_1"] = round(per_step * res["decode"][batches[0]]["tok_s"] / 1e9, 2) if batches[0] == 1 else None
    res["peak_rss_mb"] = round(psutil.Process().memory_info().rss / 2**20)
    try:
        import resource

        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    except ImportError:
        pass
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["default"])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--batches", default="1,8,16,32")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    batches = [int(x) for x in a.batches.split(",")]
    if a.one:
        print(json.dumps(measure(a.one, a.prompt_len, a.gen, batches, a.dtype)))
        return
    rows = []
    for m in a.models:
        cmd = [sys.executable, __file__, "--one", m, "--prompt-len", str(a.prompt_len), "--gen", str(a.gen),
               "--batches", a.batches, "--dtype", a.dtype]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{m}: failed\n{p.stderr[-3000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    print(f"\nprompt {a.prompt_len} tokens, {a.gen} generated per sequence, greedy; torch threads = cores\n")
    head = (
        "| model | linears MiB | embed+head MiB | prefill tok/s | "
        + " | ".join(f"decode tok/s @{b}" for b in batches)
        + " | GB/s @1 | peak RSS MB |"
    )
    print(head)
    print("|---" * (6 + len(batches)) + "|")
    for r in rows:
        wb = r["weight_bytes"]
        dec = " | ".join(
            str(r["decode"][str(b)]["tok_s"] if str(b) in r["decode"] else r["decode"][b]["tok_s"]) for b in batches
        )
        print(
            f"| {r['model']} | {wb['linears'] / 2**20:.1f} | {(wb['embedding'] + wb['lm_head']) / 2**20:.1f} "
            f"| {r['prefill_tok_s']} | {dec} | {r['gb_s_at_1']} | {r['peak_rss_mb']} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
