"""Saturated in-process throughput (requests/s) of the embedded engine: dense vs quantized, float32 vs bf16 prefill.

    .venv/bin/python benchmarks/saturated_throughput.py default out/smollm2-w4a16 [--profiles 128/64,256/32]
                                                        [--requests 64] [--repeats 1]

64 requests of random token ids (PROMPT tokens each, GEN generated, greedy, ignore_eos) handed to LLM.generate at
once, max_num_seqs 32, 512 batched tokens a step: the engine is saturated, as in GuideLLM's throughput profile,
without HTTP. Each (model, prefill dtype, profile) runs in its own subprocess, models alternated. Prints a table.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time


def one(model: str, prefill_dtype: str, prompt: int, gen: int, requests: int) -> float:
    import torch

    from llmpress.engine import LLM, SamplingParams

    llm = LLM(model, prefill_dtype=prefill_dtype, max_num_seqs=32, max_num_batched_tokens=512,
              kv_cache_memory_bytes=1 << 30)
    g = torch.Generator().manual_seed(0)
    reqs = [{"prompt_token_ids": torch.randint(100, 40000, (prompt,), generator=g).tolist()} for _ in range(requests)]
    sp = SamplingParams(temperature=0, max_tokens=gen, ignore_eos=True)
    llm.generate(reqs[:4], sp, use_tqdm=False)  # warm-up
    t = time.perf_counter()
    llm.generate(reqs, sp, use_tqdm=False)
    return requests / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--profiles", default="128/64,256/32", help="PROMPT/GEN pairs")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        model, dtype, prompt, gen = a.one
        print(one(model, dtype, int(prompt), int(gen), a.requests))
        return
    profiles = [tuple(int(v) for v in p.split("/")) for p in a.profiles.split(",")]
    print("| profile | prefill dtype | " + " | ".join(f"{m} req/s" for m in a.models) + " | last / first |")
    print("|---" * (3 + len(a.models)) + "|")
    for prompt, gen in profiles:
        for dtype in ("float32", "bfloat16"):
            rates = {m: [] for m in a.models}
            for _ in range(a.repeats):
                for m in a.models:
                    out = subprocess.run([sys.executable, __file__, m, "--requests", str(a.requests), "--one", m, dtype,
                                          str(prompt), str(gen)], capture_output=True, text=True, check=True)
                    rates[m].append(float(out.stdout.strip().splitlines()[-1]))
            mean = {m: sum(r) / len(r) for m, r in rates.items()}
            first, last = mean[a.models[0]], mean[a.models[-1]]
            cells = " | ".join(" / ".join(f"{v:.2f}" for v in rates[m]) for m in a.models)
            print(f"| {prompt}/{gen} | {dtype} | {cells} | {last / first:.2f} |", flush=True)


if __name__ == "__main__":
    main()
