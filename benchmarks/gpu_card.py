"""The cards' GPU rows on the embedded engine, in one short run on one GPU (issue 18).

    python benchmarks/gpu_card.py --out DIR [--budget-s 480] [--layers 32]

On the card model's shape (../shared/configs/deepseek-r1-distill-llama-8b.json, built into `llmpress synth`):
  kernels   each Triton GEMM at the 8B shapes, M = 1 and 16: time and achieved bandwidth, beside the
            machine's measured copy bandwidth (the ceiling for a memory-bound GEMV)
  card      bf16, W4A16 (int4 g128) and FP8-dynamic models of all 32 layers, made in GPU memory from
            random weights (round-to-nearest: speed does not depend on the algorithm), run by the
            embedded engine with CUDA graphs: the cards' 256/128 profile single-stream (latency, TTFT,
            inter-token latency) and 16 streams at once (output tokens/s)
  parity    a 2-layer synth checkpoint of the same shape compressed W4A16: greedy tokens and logits of the
            GPU engine (Triton kernels) against the CPU engine (C++ kernels), both float32
  compress  `compress --device cuda` against `--device cpu` on that checkpoint: the same codes and scales
            up to float rounding
  gptq      GPTQ W4A16 calibration time per layer at 8192-token samples, two sample counts, extrapolated to
            the card's 1024 x 8192 tokens and all 32 layers

Every section is timed and written to DIR/gpu_card.json as it ends, and DIR/gpu_card.md holds the table; a
section that fails records its error and the run goes on. Sections past --budget-s are skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llmpress.engine import extension  # noqa: E402
from llmpress.engine.llm_engine import EngineConfig, LLMEngine  # noqa: E402
from llmpress.engine.llm import LLM  # noqa: E402
from llmpress.engine.sampling import SamplingParams  # noqa: E402
from llmpress.synth.config import load_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from card_model import build_model, gen_linear, quantized, tokenizer  # noqa: E402

CARD = "deepseek-r1-distill-llama-8b"
# the cards' H100 figures (vLLM 0.7.2, 256 prompt / 128 output tokens, single stream), seconds
CARD_H100 = {"bf16": 1.0, "W4A16": 0.7, "FP8_DYNAMIC": 0.7}
T0 = time.time()
DEV = "cuda"  # "cpu" with --smoke: the whole script on a tiny config, to check it before a GPU run
PROMPT, OUTPUT, STREAMS = 256, 128, 16  # the cards' 256/128 profile; 16 concurrent streams
# --smoke: the card's structure (GQA 4:1, llama3 rope, untied head) at a size the CPU runs in seconds
SMOKE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 1,
         "head_dim": 64, "vocab_size": 4096, "bos_token_id": 1, "eos_token_id": 2}


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- machine
def machine() -> dict:
    n = 1 << 29 if DEV == "cuda" else 1 << 24  # float32 elements: 2 GiB read + 2 GiB written per copy
    a = torch.empty(n, dtype=torch.float32, device=DEV).normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ms = _time_cuda(lambda: b.copy_(a), 20)
    s = 8192 if DEV == "cuda" else 512
    x = torch.randn(s, s, device=DEV, dtype=torch.bfloat16)
    for _ in range(3):
        x @ x
    mm = _time_cuda(lambda: x @ x, 10)
    del a, b, x
    p = torch.cuda.get_device_properties(0) if DEV == "cuda" else None
    return {"gpu": p.name if p else "cpu (smoke)", "sms": p.multi_processor_count if p else os.cpu_count(),
            "memory_gib": round(p.total_memory / 2**30, 1) if p else None,
            "torch": torch.__version__, "triton": _triton_version(),
            "copy_gbps": round(8 * n / ms / 1e6, 1), "bf16_tflops": round(2 * s**3 / mm / 1e9, 1)}


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "none"


def _time_cuda(fn, reps: int) -> float:
    """Median milliseconds of fn over reps, by CUDA events (host clock on the CPU)."""
    times = []
    for _ in range(reps):
        if DEV != "cuda":
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
            continue
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def _empty_cache() -> None:
    if DEV == "cuda":
        torch.cuda.empty_cache()


def _time_graph(fn, reps: int = 20) -> float:
    """Median GPU milliseconds of one fn call, from a CUDA graph of `reps` calls (no host launch overhead:
    what a decode step replayed from a graph pays). The host clock on the CPU."""
    if DEV != "cuda":
        return _time_cuda(fn, reps)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    return _time_cuda(g.replay, 5) / reps


# ----------------------------------------------------------------------------------------------- sections
def kernels_section(hf: dict, copy_gbps: float) -> list[dict]:
    """Each linear of a layer at M = 1 and 16, per scheme (and per int4 decode variant where triton_linear has
    several): GPU time from a CUDA graph of calls, achieved bandwidth (weights + x + y), error vs the reference."""
    from llmpress.engine import triton_linear

    h, i = hf["hidden_size"], hf["intermediate_size"]
    d = h // hf["num_attention_heads"]
    shapes = {"qkv": ((hf["num_attention_heads"] + 2 * hf["num_key_value_heads"]) * d, h), "o": (h, h),
              "gate_up": (2 * i, h), "down": (h, i)}
    variants = list(getattr(triton_linear, "INT4_DECODE_VARIANTS", (None,)))
    g = torch.Generator(device=DEV).manual_seed(1)
    rows = []
    for scheme in ("bf16", "W4A16", "FP8_DYNAMIC"):
        for name, (n, k) in shapes.items():
            w = quantized(gen_linear(n, k, 1.0, g), scheme)
            for m in (1, 16):
                x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
                ref = w.reference(x.float())
                for variant in variants if scheme == "W4A16" else (None,):
                    if variant is not None:
                        if variant == "gemv" and m != 1:
                            continue
                        triton_linear.INT4_DECODE = variant
                    y = w(x)
                    err = float((y.float() - ref).norm() / ref.norm())
                    ms = _time_graph(lambda: w(x))
                    moved = w.nbytes + 2 * m * (n + k)
                    rows.append({"scheme": scheme, "variant": variant, "linear": name, "N": n, "K": k, "M": m,
                                 "us": round(ms * 1e3, 1), "gbps": round(moved / ms / 1e6, 1),
                                 "of_copy": round(moved / ms / 1e6 / copy_gbps, 2), "rel_err": err})
                    log(f"kernel {scheme:12s} {str(variant):8s} {name:8s} M={m:2d}: {ms * 1e3:7.1f} us, "
                        f"{moved / ms / 1e6:7.1f} GB/s, err {err:.2e}")
            del w
    if variants != [None]:  # the engine runs the int4 variant that was fastest over a layer at M = 1 (finite error)
        def total(v):
            r = [x for x in rows if x["variant"] == v and x["M"] == 1]
            ok = r and all(x["rel_err"] < 2e-2 for x in r)
            return sum(x["us"] for x in r) if ok else float("inf")
        best = min(variants, key=total)
        triton_linear.INT4_DECODE = best
        log(f"int4 decode variant for the engine: {best} ({ {v: total(v) for v in variants} } us per layer at M=1)")
    return rows


def _profile(llm: LLM, vocab: int, prompt: int, output: int, streams: int, reps: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    params = SamplingParams(temperature=0, max_tokens=output, ignore_eos=True)
    runs = []
    for _ in range(reps):
        prompts = [{"prompt_token_ids": torch.randint(1000, vocab - 1000, (prompt,), generator=g).tolist()}
                   for _ in range(streams)]
        _sync()
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t
        assert all(len(o.outputs[0].token_ids) == output for o in outs)
        ttft = sorted(o.metrics["first_token_time"] - o.metrics["arrival_time"] for o in outs)
        lat = sorted(o.metrics["finished_time"] - o.metrics["arrival_time"] for o in outs)
        runs.append({"wall_s": wall, "ttft_s": ttft[len(ttft) // 2], "latency_s": lat[len(lat) // 2]})
    runs.sort(key=lambda r: r["wall_s"])
    r = runs[len(runs) // 2]
    return {"streams": streams, "prompt": prompt, "output": output, "reps": reps,
            "latency_s": round(r["latency_s"], 4), "ttft_s": round(r["ttft_s"], 4),
            "itl_ms": round((r["latency_s"] - r["ttft_s"]) / (output - 1) * 1e3, 3),
            "output_tok_s": round(streams * output / r["wall_s"], 1), "all_wall_s": [round(x["wall_s"], 4) for x in runs]}


def card_section(hf: dict, layers: int, results: dict, save) -> None:
    tok = tokenizer(hf["vocab_size"], hf["bos_token_id"], hf["eos_token_id"])
    results["card"] = {}
    for scheme in ("W4A16", "FP8_DYNAMIC", "bf16"):
        try:
            t = time.time()
            model = build_model(hf, scheme, layers, DEV)
            _sync()
            built = time.time() - t
            wb = model.weight_bytes()
            row = {"build_s": round(built, 1), "weight_gb": round(sum(wb.values()) / 1e9, 2)}
            log(f"{scheme}: built in {built:.1f}s, {row['weight_gb']} GB of weights")
            for eager in (False, True):
                t = time.time()
                cfg = EngineConfig(model=f"synth:{CARD}", device=DEV, dtype="bfloat16", max_model_len=4096,
                                   max_num_seqs=16, max_num_batched_tokens=4096, kv_cache_memory_bytes=4 << 30,
                                   enforce_eager=eager)
                llm = LLM.from_engine(LLMEngine(cfg, model=model, tokenizer=tok))
                key = "eager" if eager else "graphs"
                row[f"{key}_setup_s"] = round(time.time() - t, 1)
                _profile(llm, hf["vocab_size"], PROMPT, 16, 1, 1, 99)  # warm-up: Triton compiles, allocator grows
                row[f"{key}_single"] = _profile(llm, hf["vocab_size"], PROMPT, OUTPUT, 1, 3 if not eager else 1, 0)
                log(f"{scheme} {key} single: {row[f'{key}_single']}")
                if not eager:
                    row["graphs_16"] = _profile(llm, hf["vocab_size"], PROMPT, OUTPUT, STREAMS, 2, 1)
                    log(f"{scheme} graphs 16 streams: {row['graphs_16']}")
                    gr = llm.engine.graphs
                    if gr is not None and gr.graphs:  # GPU time of one decode step alone: ITL minus this is the host's
                        for b in (1, 16):
                            if b in gr.graphs:
                                row[f"graph_step_ms_{b}"] = round(_time_cuda(gr.graphs[b].replay, 20), 3)
                        log(f"{scheme} graph replay: {row.get('graph_step_ms_1')} ms @1, {row.get('graph_step_ms_16')} ms @16")
                del llm
                _empty_cache()
            # bytes one decode step must read: every weight once (embedding: one row) + the KV so far
            row["bytes_per_token_gb"] = round((wb["linears"] + wb["norms"] + wb["lm_head"]) / 1e9, 3)
            results["card"][scheme] = row
        except Exception as e:  # noqa: BLE001 (a benchmark section records its failure and the run goes on)
            results["card"][scheme] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
            log(f"{scheme} FAILED: {e}")
        finally:
            model = None
            _empty_cache()
            save()


def _calib_file(folder: Path, n: int, words: int) -> Path:
    """Chat rows of random words (a random-weight model: what matters is the token count)."""
    import random

    rnd = random.Random(0)
    vocab = [f"{a}{b}" for a in "bcdfghjklmnprstvw" for b in ("a", "e", "i", "o", "u", "ar", "en", "is")]
    path = folder / f"calib-{n}-{words}.jsonl"
    with path.open("w") as f:
        for _ in range(n):
            text = " ".join(rnd.choice(vocab) for _ in range(words))
            f.write(json.dumps({"messages": [{"role": "user", "content": text[: len(text) // 2]},
                                             {"role": "assistant", "content": text[len(text) // 2:]}]}) + "\n")
    return path


def _compress(src: Path, out: Path, device: str, calib: Path, samples: int, seq: int, dtype: str) -> dict:
    from llmpress.compress import Recipe, compress

    r = Recipe(scheme="W4A16", group_size=128, num_samples=samples, max_seq_len=seq, dataset=str(calib),
               device=device, dtype=dtype)
    t = time.time()
    compress(src, r, out, overwrite=True, progress=False)
    stats = json.loads((out / "llmpress_compress.json").read_text())
    return {"wall_s": round(time.time() - t, 2), "layers": stats.get("layers"), "peak_rss_mb": stats.get("peak_rss_mb")}


def compress_and_parity(work: Path, source: str, results: dict, save) -> None:
    from llmpress.checkpoint.shards import LazyCheckpoint
    from llmpress.synth.build import synth

    t = time.time()
    src = synth(source, work / "synth2", layers=2, seed=0, overwrite=True, progress=False)
    results["synth2_s"] = round(time.time() - t, 1)
    calib = _calib_file(work, 16, 300)
    comp = results["compress"] = {}
    for dev in ("cuda", "cpu"):
        comp[dev] = _compress(src, work / f"w4-{dev}", DEV if dev == "cuda" else dev, calib, 8, 256, "float32")
        log(f"compress W4A16 on {dev}: {comp[dev]}")
        save()
    # the same codes and scales up to float rounding
    diff = {"packed_words_equal": [], "scale_max_rel": []}
    a, b = LazyCheckpoint(work / "w4-cuda"), LazyCheckpoint(work / "w4-cpu")
    for k in a.keys():
        if k.endswith("weight_packed"):
            diff["packed_words_equal"].append(float((a.get(k) == b.get(k)).float().mean()))
        if k.endswith("weight_scale"):
            x, y = a.get(k).float(), b.get(k).float()
            diff["scale_max_rel"].append(float(((x - y).abs() / y.abs().clamp_min(1e-12)).max()))
    comp["cuda_vs_cpu"] = {"min_packed_equal": min(diff["packed_words_equal"]),
                           "max_scale_rel": max(diff["scale_max_rel"])}
    log(f"compress cuda vs cpu: {comp['cuda_vs_cpu']}")
    save()

    # parity: the GPU engine against the CPU engine, float32, greedy
    ids = list(range(1000, 1032))
    outs, first = {}, {}
    for dev in ("cuda", "cpu"):
        eng = LLMEngine(EngineConfig(model=str(work / "w4-cuda"), device=DEV if dev == "cuda" else dev, dtype="float32",
                                     max_model_len=1024,
                                     kv_cache_memory_bytes=1 << 30, max_num_seqs=4))
        first[dev] = eng.prompt_logits(ids, last_only=True)[0]
        llm = LLM.from_engine(eng)
        outs[dev] = llm.generate({"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                                 use_tqdm=False)[0].outputs[0].token_ids
        del llm, eng
    top2 = first["cpu"].topk(2).values
    results["parity"] = {
        "gpu_tokens": outs["cuda"], "cpu_tokens": outs["cpu"], "equal": outs["cuda"] == outs["cpu"],
        "first_logits_max_abs_diff": float((first["cuda"] - first["cpu"]).abs().max()),
        "first_logits_top1_margin": float(top2[0] - top2[1]), "cpu_kernels": extension.available()}
    log(f"parity: {results['parity']}")
    save()


def gptq_section(work: Path, results: dict, save, budget_left, seq: int = 8192) -> None:
    """Calibration time at 8192-token samples for two sample counts on the 2-layer model: per layer,
    time = a + b * samples; the card's run is 1024 samples over 32 layers."""
    src = work / "synth2"
    pts = {}
    for n in (8, 32):
        if budget_left() < 60:
            break
        calib = _calib_file(work, n, seq + seq // 8)  # more words than `seq` tokens: every sample is cut at seq
        pts[n] = _compress(src, work / f"gptq-{n}", DEV, calib, n, seq, "bfloat16")
        log(f"gptq {n} x {seq} on {DEV}: {pts[n]['wall_s']} s")
        results["gptq"] = {"points": pts}
        save()
    if len(pts) == 2:
        (n1, a), (n2, b) = sorted(pts.items())
        per_sample = (b["wall_s"] - a["wall_s"]) / (n2 - n1) / 2  # per layer (2 layers)
        fixed = a["wall_s"] / 2 - per_sample * n1
        whole = 32 * (fixed + per_sample * 1024 * 8192 / seq)
        if per_sample <= 0:  # the two runs differ by less than their noise: no slope to extrapolate
            results["gptq"]["note"] = "per-sample cost below the timing noise"
            return
        results["gptq"].update(per_layer_fixed_s=round(fixed, 2), per_layer_per_sample_s=round(per_sample, 4),
                               card_1024x8192_32_layers_min=round(whole / 60, 1))
        log(f"gptq extrapolated to 1024 x 8192, 32 layers: {whole / 60:.1f} min")
        save()


# ----------------------------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    m = results.get("machine", {})
    lines = [f"GPU: {m.get('gpu')} ({m.get('sms')} SMs), torch {m.get('torch')}, triton {m.get('triton')}; "
             f"measured copy {m.get('copy_gbps')} GB/s, bf16 matmul {m.get('bf16_tflops')} TFLOP/s.", "",
             "| scheme | weights GB | 256/128 single-stream s (card H100) | TTFT ms | ITL ms | graph step ms "
             "| eager single s | 16 streams tok/s | bytes/token GB | copy floor / ITL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for scheme, row in results.get("card", {}).items():
        if "error" in row:
            lines.append(f"| {scheme} | error: {row['error'][:80]} |")
            continue
        s, e, b = row.get("graphs_single", {}), row.get("eager_single", {}), row.get("graphs_16", {})
        floor_ms = row["bytes_per_token_gb"] / m.get("copy_gbps", float("nan")) * 1e3
        lines.append(f"| {scheme} | {row['weight_gb']} | {s.get('latency_s')} ({CARD_H100.get(scheme)}) | "
                     f"{round(s.get('ttft_s', float('nan')) * 1e3, 1)} | {s.get('itl_ms')} | {row.get('graph_step_ms_1')} | "
                     f"{e.get('latency_s')} | "
                     f"{b.get('output_tok_s')} | {row['bytes_per_token_gb']} | "
                     f"{round(floor_ms / s['itl_ms'], 2) if s.get('itl_ms') else '-'} |")
    if "parity" in results:
        p = results["parity"]
        lines += ["", f"Parity (2-layer, W4A16, float32): GPU greedy == CPU greedy for 16 tokens: {p['equal']}; "
                  f"first-step max |Δlogit| {p['first_logits_max_abs_diff']:.2e} (top-1 margin "
                  f"{p['first_logits_top1_margin']:.3f})."]
    if "compress" in results and "cuda_vs_cpu" in results["compress"]:
        c = results["compress"]
        lines += [f"compress --device cuda vs cpu (2 layers, W4A16 g128, float32): {c['cuda']['wall_s']} s vs "
                  f"{c['cpu']['wall_s']} s; packed words equal >= {c['cuda_vs_cpu']['min_packed_equal']:.4f}, "
                  f"scales max rel diff {c['cuda_vs_cpu']['max_scale_rel']:.2e}."]
    if "gptq" in results and "card_1024x8192_32_layers_min" in results["gptq"]:
        g = results["gptq"]
        lines += [f"GPTQ W4A16 on the GPU: {g['per_layer_fixed_s']} s + {g['per_layer_per_sample_s']} s per 8192-token "
                  f"sample per layer; the card's 1024 x 8192 over 32 layers: ~{g['card_1024x8192_32_layers_min']} min."]
    if results.get("kernels"):
        lines += ["", "| scheme | variant | linear | N x K | M | us (graph) | GB/s | of copy | rel err |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["kernels"]:
            lines.append(f"| {r['scheme']} | {r.get('variant') or ''} | {r['linear']} | {r['N']}x{r['K']} | {r['M']} | "
                         f"{r['us']} | {r['gbps']} | {r['of_copy']} | {r['rel_err']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip sections that would start after this")
    ap.add_argument("--layers", type=int, default=32, help="layers of the card models (32: the real depth)")
    ap.add_argument("--sections", default="machine,kernels,card,parity,gptq")
    ap.add_argument("--smoke", action="store_true", help="a tiny config on the CPU: checks this script, measures nothing")
    args = ap.parse_args()
    global DEV, PROMPT, OUTPUT, STREAMS
    work = Path(tempfile.mkdtemp(prefix="gpu-card-"))
    hf, _ = load_config(CARD)
    source, seq = CARD, 8192
    if args.smoke:
        DEV, seq, PROMPT, OUTPUT, STREAMS = "cpu", 128, 32, 8, 4
        hf = {**hf, **SMOKE}
        source = str(work / "smoke-config.json")
        Path(source).write_text(json.dumps(hf))
    elif not torch.cuda.is_available():
        sys.exit("gpu_card.py needs a CUDA GPU (or --smoke)")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"layers": args.layers, "smoke": args.smoke}
    sections = args.sections.split(",")

    def save() -> None:
        (args.out / "gpu_card.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.out / "gpu_card.md").write_text(markdown(results))

    def left() -> float:
        return args.budget_s - (time.time() - T0)

    # the CPU engine's C++ kernels build in the background while the GPU works (parity needs them)
    build = subprocess.Popen([sys.executable, "-c", "from llmpress.engine import extension; print(extension.build())"],
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    steps = [("machine", lambda: results.__setitem__("machine", machine())),
             ("kernels", lambda: results.__setitem__("kernels", kernels_section(hf, results["machine"]["copy_gbps"]))),
             ("card", lambda: card_section(hf, args.layers, results, save)),
             ("parity", lambda: (build.wait(), compress_and_parity(work, source, results, save))),
             ("gptq", lambda: gptq_section(work, results, save, left, seq))]
    for name, fn in steps:
        if name not in sections:
            continue
        if left() < 30:
            results.setdefault("skipped", []).append(name)
            log(f"{name}: skipped, budget spent")
            continue
        t = time.time()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            results.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
            log(f"{name} FAILED: {e}")
        results.setdefault("section_s", {})[name] = round(time.time() - t, 1)
        save()
    print(markdown(results))


if __name__ == "__main__":
    main()
