"""Load checkpoints (dense or compressed-tensors) in vLLM on CPU, generate, and time decoding.

Run with the vLLM venv's interpreter (it does not import llmpress):

    HF_HUB_OFFLINE=1 /work/venvs/vllm/bin/python benchmarks/vllm_cpu_generate.py \
        MODEL_DIR [MODEL_DIR ...] [--max-tokens 64] [--prompts 4] [--concurrency 1,16]

`--engine llmpress` (with the project's interpreter, .venv/bin/python) runs the same prompts and
timing through llmpress's embedded engine, whose LLM / SamplingParams mirror vLLM's: the two
tables compare like for like (end-to-end generate(), prefill included).

For each model dir, in its own subprocess (vLLM cannot be re-initialised cleanly in one
process): build ``LLM(...)``, apply the chat template to a few fixed prompts, generate
greedily and print the texts, then time decoding with ``ignore_eos=True`` at each
concurrency level (aggregate output tokens/s over the batch). A model that fails to load
is reported as "failed: ..." and the next one is tried. Ends with a Markdown table and a
single JSON line holding the same numbers.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence what a neural network is.",
    "List three prime numbers greater than 10.",
    "Give me a tip for learning a new language.",
    "What is 12 times 7?",
]


def quant_format(model_dir):
    """compressed-tensors format from config.json (e.g. float-quantized, int-quantized), else 'dense'."""
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            qc = json.load(f).get("quantization_config") or {}
    except OSError:
        return "?"
    return qc.get("format") or qc.get("quant_method") or ("dense" if not qc else "?")


def worker(args):
    """Runs in a subprocess: load one model, generate, time, write a result dict to args.result."""
    res = {"model": args.models[0], "format": quant_format(args.models[0]), "engine": args.engine}
    t0 = time.perf_counter()
    if args.engine == "llmpress":
        from llmpress import LLM, SamplingParams

        llm = LLM(model=args.models[0], max_model_len=2048, max_num_seqs=max(args.concurrency))
    else:
        from vllm import LLM, SamplingParams

        llm = LLM(model=args.models[0], dtype=args.dtype, max_model_len=2048,
                  gpu_memory_utilization=0.3, enforce_eager=True, seed=0)
    res["load_s"] = round(time.perf_counter() - t0, 1)

    tok = llm.get_tokenizer()
    def chat(p):
        return tok.apply_chat_template([{"role": "user", "content": p}],
                                       tokenize=False, add_generation_prompt=True)
    prompts = [chat(PROMPTS[i % len(PROMPTS)]) for i in range(args.prompts)]

    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens),
                        use_tqdm=False)
    for i, o in enumerate(outs):
        print(f"\n--- {PROMPTS[i % len(PROMPTS)]}\n{o.outputs[0].text.strip()}", flush=True)
    res["samples"] = [o.outputs[0].text for o in outs]

    fixed = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    for n in args.concurrency:
        batch = [prompts[i % len(prompts)] for i in range(n)]
        t0 = time.perf_counter()
        outs = llm.generate(batch, fixed, use_tqdm=False)
        dt = time.perf_counter() - t0
        ntok = sum(len(o.outputs[0].token_ids) for o in outs)
        res[f"tok_s@{n}"] = round(ntok / dt, 1)
    with open(args.result, "w") as f:
        json.dump(res, f)


def run_one(model_dir, args):
    """Run worker() for one model in a fresh interpreter; return its result or a failure row."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), model_dir, "--worker", "--result", path,
           "--max-tokens", str(args.max_tokens), "--prompts", str(args.prompts),
           "--concurrency", ",".join(map(str, args.concurrency)), "--dtype", args.dtype, "--engine", args.engine]
    # tee the child's output: vLLM logs the root cause of a failure from its worker processes
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in proc.stdout:
        sys.stdout.write(line)
        log.append(line.rstrip())
    proc.wait()
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        # first exception line that is not a generic "initialization failed" wrapper
        bare = [re.sub(r"^\(.*?\) ERROR .*?\] ", "", l) for l in log]  # drop vLLM's log prefix
        errs = [l for l in bare if re.match(r"\S*(Error|Exception): ", l)]
        msg = next((e for e in errs if "initialization failed" not in e),
                   errs[-1] if errs else (log[-1] if log else ""))
        return {"model": model_dir, "format": quant_format(model_dir),
                "error": f"failed (rc={proc.returncode}): {msg.strip()[:200]}"}
    finally:
        os.unlink(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="MODEL_DIR")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--concurrency", default="1,16",
                    type=lambda s: [int(x) for x in s.split(",") if x])
    ap.add_argument("--dtype", default="bfloat16", help="activation dtype passed to vLLM's LLM()")
    ap.add_argument("--engine", choices=["vllm", "llmpress"], default="vllm")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        return worker(args)

    rows = []
    for m in args.models:
        print(f"\n===== {m}", flush=True)
        rows.append(run_one(m, args))
    cols = [f"tok/s @{n}" for n in args.concurrency]
    print("\n| model dir | format | load s | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for r in rows:
        if "error" in r:
            cells = [r["error"].replace("|", "/")] + [""] * len(cols)
        else:
            cells = [str(r["load_s"])] + [str(r[f"tok_s@{n}"]) for n in args.concurrency]
        print(f"| {r['model']} | {r['format']} | " + " | ".join(cells) + " |")
    print(json.dumps([{k: v for k, v in r.items() if k != "samples"} for r in rows]))


if __name__ == "__main__":
    main()
