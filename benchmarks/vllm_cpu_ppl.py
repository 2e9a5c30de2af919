"""Does vLLM read our checkpoints as transformers does? Perplexity of each on the same token windows.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vllm_cpu_ppl.py DIR [DIR ...] [--max-tokens 16384] \
        [--vllm-python /work/venvs/vllm/bin/python]

With the project's interpreter: cuts the held-out text (the Lee corpus, `llmpress ppl`'s default)
into the same windows `llmpress ppl` scores, runs each checkpoint through transformers (float32,
llmpress.eval.perplexity.perplexity, what `llmpress ppl` runs) and, in a subprocess of the vLLM venv (vllm-cpu; see
vllm_cpu_generate.py for its install), through vLLM's prompt_logprobs (bf16 activations, its own
kernels). A checkpoint vLLM misreads (a wrong zero point, a rotation it does not see, a scale
layout it transposes) shows as a perplexity far from transformers'; the two agree to bf16 noise
when it reads it right. Ends with a Markdown table and one JSON line.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def vllm_worker(model: str, windows_file: str) -> None:
    """In the vLLM venv: the mean negative log-likelihood of every scored token, printed as JSON."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    windows = json.loads(Path(windows_file).read_text())
    llm = LLM(model=model, dtype="bfloat16", max_model_len=max(map(len, windows)) + 8, enforce_eager=True, seed=0)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    outs = llm.generate([TokensPrompt(prompt_token_ids=w) for w in windows], params)
    nll, n = 0.0, 0
    for w, out in zip(windows, outs):
        for tok, lp in zip(w[1:], out.prompt_logprobs[1:]):  # position 0 has no prediction
            nll -= lp[tok].logprob
            n += 1
    print("RESULT " + json.dumps({"nll": nll / n, "tokens": n}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--vllm-python", default="/work/venvs/vllm/bin/python")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "WINDOWS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return vllm_worker(*a.worker)
    if not a.models:
        ap.error("give one or more checkpoint folders")

    from transformers import AutoTokenizer

    from llmpress.corpus import held_text
    from llmpress.eval.perplexity import perplexity, token_windows

    tok = AutoTokenizer.from_pretrained(a.models[0])
    windows = [w[0].tolist() for w in token_windows(tok, held_text()[0], a.window, a.max_tokens)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(tmp) / "windows.json"
        wf.write_text(json.dumps(windows))
        for model in a.models:
            t = perplexity(model, window=a.window, max_tokens=a.max_tokens, progress=False)  # the same windows
            t_ppl, n = t.perplexity, t.tokens
            env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="2", HF_HUB_OFFLINE="1")
            p = subprocess.run([a.vllm_python, __file__, "--worker", model, str(wf)], env=env,
                               capture_output=True, text=True)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                err = (p.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"model": model, "tokens": n, "transformers_ppl": t_ppl, "vllm_ppl": None,
                             "error": err})
                continue
            v = json.loads(line[7:])
            rows.append({"model": model, "tokens": n, "transformers_ppl": t_ppl,
                         "vllm_ppl": math.exp(v["nll"]), "vllm_tokens": v["tokens"]})
            print(f"{model}: transformers {rows[-1]['transformers_ppl']:.3f}, vLLM {rows[-1]['vllm_ppl']:.3f}",
                  flush=True)
    print("\n| checkpoint | tokens | transformers ppl (fp32) | vLLM ppl (bf16) | vLLM / transformers |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        v = "failed: " + r["error"] if r["vllm_ppl"] is None else f"{r['vllm_ppl']:.3f}"
        ratio = "" if r["vllm_ppl"] is None else f"{r['vllm_ppl'] / r['transformers_ppl']:.4f}"
        print(f"| {Path(r['model']).name} | {r['tokens']} | {r['transformers_ppl']:.3f} | {v} | {ratio} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
