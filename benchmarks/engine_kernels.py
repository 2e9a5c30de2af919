"""Microbenchmark of the engine's quantized CPU kernels (src/llmpress/engine/linear.py).

    .venv/bin/python benchmarks/engine_kernels.py [--threads 2] [--repeats 7] [--crossover]

y = x @ W^T for SmolLM2-135M's Linear shapes (K -> N) and a 4096 x 4096 one, at M = 1 (decode)
and M = 16 rows: torch dense float32 / bf16, torch's own int4 CPU kernel, and our containers.
Each cell is the median over `repeats` timed batches (each >= 20 ms) of the time per call, and
the effective bandwidth over the weight's resident bytes (GB/s = bytes / time).

"cold": each call takes the next of several copies of the weight, 512 MiB in all, so weights
come from DRAM as in a real decode step (a model's layers evict each other). "hot": one weight,
called again and again, stays in cache if it fits (this machine's L3 is large), which flatters
the formats that read many bytes. `--crossover` times our fused kernel against dequantize +
sgemm, and, on CPUs with AMX, the AMX GEMM, for growing M: how `QuantizedWeight.small_m_max` and
`amx_m` were chosen; `--prefill` times the bf16 prefill GEMMs (int4 on AMX against the dense
bf16 weight, both with prefill_dtype bf16) at the 8B shapes. Weights are random,
quantized and written by the project's own writer, then loaded through `linear.make_weight`.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from llmpress.checkpoint.compressed_tensors import compress_linear
from llmpress.compress.observers import minmax_qparams
from llmpress.quant import get_scheme, quantize
from llmpress.engine import extension, linear

SHAPES = [(576, 576), (576, 1536), (1536, 576), (576, 49152), (4096, 4096)]  # (K, N)
COLD_BYTES = 512 << 20


def bench(fn, repeats: int) -> float:
    """Median seconds per call."""
    for _ in range(3):
        fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.02:
        fn()
        n += 1
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def ours(scheme_name: str, w: torch.Tensor, group: int | None = None) -> linear.QuantizedWeight:
    s = get_scheme(scheme_name).with_group_size(group)
    scale, zp = minmax_qparams(w, s.weights, torch.bfloat16)
    tensors = compress_linear(quantize(w, scale, zp, s.weights), scale, zp, s)
    return linear.make_weight(tensors, s.weights, s.input_activations)


def clone_weight(q: linear.QuantizedWeight) -> linear.QuantizedWeight:
    c = copy.copy(q)
    for k, v in vars(q).items():
        if isinstance(v, torch.Tensor):
            setattr(c, k, v.clone())
    return c


def torch_int4(w: torch.Tensor, group: int):
    """torch's _weight_int4pack_mm_for_cpu as (packed, scales_and_zeros), or None."""
    try:
        n, k = w.shape
        g = w.reshape(n, k // group, group)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        q = ((g - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        packed = torch._convert_weight_to_int4pack_for_cpu(q, 2)
        zeros = lo + 8 * scale  # torch's convention: w = (q - 8) * scale + zero
        sz = torch.stack([scale, zeros], -1).transpose(0, 1).contiguous()  # [K/group, N, 2]
        torch._weight_int4pack_mm_for_cpu(torch.randn(1, k), packed, group, sz)
        return packed, sz
    except Exception as e:  # not in this torch build / this CPU
        print(f"(torch int4 kernel unavailable: {type(e).__name__}: {e})")
        return None


def methods(w: torch.Tensor) -> dict:
    """name -> (copy: () -> (callable x -> y), resident weight bytes)."""
    w_bf16 = w.to(torch.bfloat16)
    out = {
        "torch dense fp32": (lambda: (lambda x, c=w.clone(): F.linear(x, c)), w.nbytes),
        "torch dense bf16": (lambda: (lambda x, c=w_bf16.clone(): F.linear(x.to(torch.bfloat16), c)), w_bf16.nbytes),
    }
    t4 = torch_int4(w, 64)
    if t4:
        def make(p=t4[0], sz=t4[1]):
            p, sz = p.clone(), sz.clone()
            return lambda x: torch._weight_int4pack_mm_for_cpu(x, p, 64, sz)
        out["torch int4pack g64"] = (make, t4[0].nbytes + t4[1].nbytes)
    for label, scheme, group in [("int4 g64", "W4A16", 64), ("int4 g128", "W4A16", 128), ("int4 asym g128", "W4A16_ASYM", 128),
                                 ("int8 (W8A16)", "W8A16", None), ("W8A8", "W8A8", None), ("fp8 (FP8_DYNAMIC)", "FP8_DYNAMIC", None)]:
        if group and w.shape[1] % group:
            continue  # e.g. K = 576 is 4.5 groups of 128: no such checkpoint
        q = ours(scheme, w, group)
        out[f"ours {label}"] = (lambda q=q: clone_weight(q), q.nbytes)
    d = linear.DenseWeight(w_bf16)
    out["ours bf16 GEMV"] = (lambda: clone_weight(d), d.nbytes)
    return out


def measure(make, nbytes: int, xs: dict, repeats: int) -> dict:
    """{(mode, M): seconds} for one method."""
    res = {}
    hot = make()
    for m, x in xs.items():
        res[("hot", m)] = bench(lambda: hot(x), repeats)
    copies = [hot] + [make() for _ in range(max(1, min(4096, COLD_BYTES // nbytes)) - 1)]
    for m, x in xs.items():
        nxt = itertools.cycle(copies).__next__
        res[("cold", m)] = bench(lambda: nxt()(x), repeats)
    return res


def table(results: dict, mode: str, m: int) -> str:
    names = list(dict.fromkeys(name for cells in results.values() for name in cells))
    lines = [f"| {mode}, M={m} | " + " | ".join(f"{k}→{n}" for k, n in results) + " |", "|---" * (len(results) + 1) + "|"]
    for name in names:
        cells = []
        for shape in results:
            if name not in results[shape]:
                cells.append("—")
                continue
            times, nbytes = results[shape][name]
            sec = times[(mode, m)]
            cells.append(f"{sec * 1e6:,.0f} µs ({nbytes / sec / 1e9:.1f} GB/s)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def crossover(repeats: int) -> None:
    """Fused kernel vs AMX (where the CPU has it) vs dequantize + sgemm, µs per call (hot), by M."""
    ms = [1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256]
    print("\n### Fused kernel vs AMX vs dequantize + sgemm (µs, hot), by M\n")
    print("| weight | shape | path | " + " | ".join(f"M={m}" for m in ms) + " |")
    print("|---|---|---|" + "---|" * len(ms))
    for k, n in [(576, 1536), (1536, 576), (4096, 4096)]:
        w = torch.randn(n, k) * 0.05
        for label, q in [("int4 g64", ours("W4A16", w, 64)), ("int8", ours("W8A16", w)), ("W8A8", ours("W8A8", w)),
                         ("fp8", ours("FP8_DYNAMIC", w)), ("bf16", linear.DenseWeight(w.to(torch.bfloat16)))]:
            amx = q._amx_ok
            for path, limit in [("fused", 10**9), ("AMX", None), ("dequant+sgemm", 0)]:
                if path == "AMX" and not amx:
                    continue
                q._amx_ok, q.amx_m = path == "AMX", (1, 10**9)
                q.small_m_max = limit
                row = [bench(lambda: q(x), repeats) * 1e6 for m in ms for x in [torch.randn(m, k)]]
                print(f"| {label} | {k}→{n} | {path} | " + " | ".join(f"{t:,.0f}" for t in row) + " |", flush=True)


def prefill(repeats: int) -> None:
    """bf16 prefill GEMMs as the engine runs them (prefill_dtype bf16): int4 on AMX against the dense bf16 weight."""
    ms = [64, 256, 512]
    print("\n### bf16 prefill: int4 (AMX) vs dense bf16, ms per call (hot), by M\n")
    print("| shape K→N | group | " + " | ".join(f"M={m} int4 / dense" for m in ms) + " |")
    print("|---|---|" + "---|" * len(ms))
    for k, n in [(576, 1536), (1536, 576), (4096, 4096), (4096, 28672), (14336, 4096)]:
        w = torch.randn(n, k) * 0.05
        group = 64 if k % 128 else 128
        q, dense = ours("W4A16", w, group), linear.DenseWeight(w.to(torch.bfloat16))
        q.prefill_dtype = dense.prefill_dtype = torch.bfloat16
        cells = []
        for m in ms:
            x = torch.randn(m, k)
            t_q, t_d = bench(lambda: q(x), repeats), bench(lambda: dense(x), repeats)
            cells.append(f"{t_q * 1e3:.2f} / {t_d * 1e3:.2f} ({t_d / t_q:.2f}x)")
        print(f"| {k}→{n} | {group} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--crossover", action="store_true", help="also time fused vs dequantize + sgemm by M")
    ap.add_argument("--prefill", action="store_true", help="only the bf16 prefill GEMMs: int4 (AMX) vs dense bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ok = extension.build()
    print(f"extension: {'built/loaded' if ok else 'UNAVAILABLE (reference path)'} in {time.perf_counter() - t0:.1f} s; "
          f"fast path: {extension.available()}; torch {torch.__version__}; {torch.get_num_threads()} threads\n", flush=True)
    torch.manual_seed(0)
    if args.prefill:
        prefill(args.repeats)
        return
    results = {}
    for k, n in SHAPES:
        w = torch.randn(n, k) * 0.05
        xs = {1: torch.randn(1, k), 16: torch.randn(16, k)}
        results[(k, n)] = {name: (measure(make, nbytes, xs, args.repeats), nbytes) for name, (make, nbytes) in methods(w).items()}
    for mode, m in [("cold", 1), ("hot", 1), ("cold", 16)]:
        print(table(results, mode, m) + "\n")
    print("| cold, M=16 / M=1 time | " + " | ".join(f"{k}→{n}" for k, n in SHAPES) + " |")
    print("|---" * (len(SHAPES) + 1) + "|")
    for name in dict.fromkeys(name for cells in results.values() for name in cells):
        ratios = [f"{t[('cold', 16)] / t[('cold', 1)]:.1f}×" if (t := results[s].get(name, (None,))[0]) else "—" for s in SHAPES]
        print(f"| {name} | " + " | ".join(ratios) + " |")
    if args.crossover:
        crossover(args.repeats)


if __name__ == "__main__":
    main()
