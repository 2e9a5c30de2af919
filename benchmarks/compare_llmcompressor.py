"""llmpress vs llm-compressor 0.14.0.1, side by side, on the same model, the same
calibration samples and the same scheme; prints wall time, peak RSS, perplexity
and KL divergence of both.

    .venv/bin/python benchmarks/compare_llmcompressor.py --scheme W4A16 --group-size 64 \
        [--model default|qwen3-random|DIR] [--num-samples 128] [--max-seq-len 512] [--out out/compare] [--algorithm awq]

llm-compressor runs in its own venv (default /work/venvs/llmcompressor; see
benchmarks/README.md for the install) through benchmarks/llmcompressor_run.py,
fed the token ids llmpress rendered, so both tools calibrate on identical data.
Each tool runs as a separate process on an otherwise idle machine; wall time is
the whole process (imports and model load included), peak RSS from the kernel.
`--model qwen3-random` builds a random-weight Qwen3 (benchmarks/random_model.py) under
OUT/models on first use: the comparison on a non-Llama architecture.
Quality is measured by the same code for both (llmpress.eval.perplexity:
transformers + compressed-tensors reading each checkpoint).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import random_model  # noqa: E402 - benchmarks/random_model.py, beside this script


def run(cmd: list[str]) -> tuple[dict, float]:
    """Run a command; return its last stdout JSON line (if any) and wall seconds."""
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    last = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), "{}")
    return json.loads(last), wall


def timed(cmd: list[str], kept: Path | None = None) -> tuple[float, float, float, str]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + system: what a loaded host disturbs least).
    kept: a folder whose existence makes a failed run still count (llmpress's check gate keeps a refused
    checkpoint at OUTPUT.failed/: it is scored like any other, and its row says it was refused)."""
    t = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *cmd], capture_output=True, text=True)
    wall = time.time() - t
    if p.returncode != 0 and not (kept is not None and (kept / "config.json").is_file()):
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    rss, user, system = p.stderr.strip().splitlines()[-1].split()
    return wall, int(rss) / 1024, float(user) + float(system), p.stdout


def paired_kl(base: Path, ours: Path, theirs: Path, max_tokens: int, window: int = 512) -> tuple[float, float, int]:
    """Mean over windows of KL(base || ours) - KL(base || theirs) (nats/token), its standard error
    across windows, and the window count. Both KLs are taken on the same tokens, so the difference
    is paired: its error is far smaller than either KL's spread over the text."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from llmpress.corpus import held_text
    from llmpress.eval.perplexity import load_model, token_windows

    windows = token_windows(AutoTokenizer.from_pretrained(str(base)), held_text()[0], window, max_tokens)
    models = [load_model(p) for p in (base, ours, theirs)]
    diffs = []
    with torch.no_grad():
        for ids in windows:
            b, o, t = (F.log_softmax(m(ids).logits[0, :-1].float(), -1) for m in models)  # [T-1, V]
            p = b.exp()
            diffs.append(((p * (b - o)).sum(-1).mean() - (p * (b - t)).sum(-1).mean()).item())
    d = torch.tensor(diffs, dtype=torch.float64)
    se = d.std().item() / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return d.mean().item(), se, len(diffs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default', a model folder, or a random model: "
                    f"{', '.join(random_model.MODELS)} (built under OUT/models)")
    ap.add_argument("--scheme", default="W4A16")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--num-samples", type=int, default=128)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--dampening", type=float, default=0.1)
    ap.add_argument("--ppl-tokens", type=int, default=16384)
    ap.add_argument("--llmc-python", default="/work/venvs/llmcompressor/bin/python")
    ap.add_argument("--out", default="out/compare")
    ap.add_argument("--gptq", action="store_true", help="llmpress: GPTQ for FP8 weights too (FP8_DYNAMIC is round-to-nearest by default)")
    ap.add_argument("--algorithm", choices=["gptq", "awq"], default="gptq",
                    help="W4A16: both tools' GPTQ (default), or AWQ then round-to-nearest (AWQModifier + QuantizationModifier)")
    ap.add_argument("--skip", choices=["llmpress", "llmcompressor"], action="append", default=[])
    a = ap.parse_args()

    from transformers import AutoTokenizer

    from llmpress.compress.dataset import calibration_samples
    from llmpress.eval.perplexity import perplexity
    from llmpress.models import resolve_model

    awq = a.algorithm == "awq"
    # each model's results in a folder of its own: rows of a previous run are reused below
    name = a.scheme if a.model == "default" else f"{Path(a.model).name}-{a.scheme}"
    out = Path(a.out) / (name + ("-awq" if awq else ""))
    out.mkdir(parents=True, exist_ok=True)
    if a.model in random_model.MODELS:
        base = random_model.ensure(a.model, Path(a.out) / "models", resolve_model("default"))
    else:
        base = resolve_model(a.model)
    calib = out / "calib.json"
    samples = calibration_samples("sharegpt", AutoTokenizer.from_pretrained(base), a.num_samples, a.max_seq_len)
    calib.write_text(json.dumps({"input_ids": [s[0].tolist() for s in samples]}))
    ntok = sum(s.shape[1] for s in samples)

    rows = {}
    if "llmcompressor" not in a.skip:
        cmd = [a.llmc_python, str(HERE / "llmcompressor_run.py"), "--model", str(base), "--calib", str(calib),
               "--scheme", a.scheme, "--group-size", str(a.group_size), "--dampening", str(a.dampening),
               "--output", str(out / "llmcompressor")] + (["--algorithm", "awq"] if awq else [])
        wall, rss, cpu, _ = timed(cmd)
        rows["llm-compressor 0.14.0.1"] = (out / "llmcompressor", wall, rss, cpu)
    if "llmpress" not in a.skip:
        folder = "llmpress-gptq" if a.gptq else "llmpress"
        # llmpress refuses a group size for per-channel schemes (W8A8, FP8): pass it only where it applies
        group = ["--group-size", str(a.group_size)] if a.scheme.startswith("W4A16") else []
        cmd = [sys.executable, "-m", "llmpress.cli", "compress", str(base), "--scheme", a.scheme, *group,
               "--num-samples", str(a.num_samples), "--max-seq-len", str(a.max_seq_len),
               "--output", str(out / folder), "--overwrite"]
        cmd += ["--algorithm", "awq"] if awq else ["--dampening-frac", str(a.dampening)] + (["--gptq"] if a.gptq else [])
        failed = out / (folder + ".failed")
        if failed.exists():
            shutil.rmtree(failed)  # a refusal from an earlier run must not stand in for this one's
        wall, rss, cpu, _ = timed(cmd, kept=failed)
        path = failed if failed.is_dir() else out / folder
        if failed.is_dir():
            print(f"llmpress's check gate refused its checkpoint: {(failed / 'CHECK_FAILED.txt').read_text().splitlines()[0]}\n"
                  f"scoring the kept {failed} like any other", file=sys.stderr)
        rows["llmpress (GPTQ)" if a.gptq else "llmpress"] = (path, wall, rss, cpu)

    results = {"model": str(base), "scheme": a.scheme, "algorithm": a.algorithm, "group_size": a.group_size,
               "samples": a.num_samples, "calib_tokens": ntok, "tools": {}}
    previous = json.loads((out / "compare.json").read_text()) if (out / "compare.json").is_file() else {}
    for name, t in previous.get("tools", {}).items():  # a row not measured now keeps its last measurement
        if name not in rows:
            results["tools"][name] = {**t, "reused": True}
    base_ppl = previous.get("base_ppl")
    for name, (path, wall, rss, cpu) in rows.items():
        r = perplexity(path, base, max_tokens=a.ppl_tokens, progress=False)
        base_ppl = r.base_perplexity
        results["tools"][name] = dict(path=str(path), refused_by_check=path.name.endswith(".failed"),
                                      wall_s=round(wall, 1), cpu_s=round(cpu, 1), peak_rss_mb=round(rss), ppl=r.perplexity,
                                      kl=r.kl_divergence, top1=r.top1_agreement)
    results["base_ppl"] = base_ppl
    grouped = f"group {a.group_size}, " if a.scheme.startswith("W4A16") else ""
    print(f"\n{base.name}: {a.scheme} ({grouped}{'AWQ' if awq else a.algorithm.upper()}), {a.num_samples} ShareGPT samples x {a.max_seq_len} tokens "
          f"({ntok} tokens), Lee corpus first {a.ppl_tokens} tokens; base perplexity {base_ppl:.3f}\n")
    print("| tool | wall s | CPU s | peak RSS MB | perplexity | Δppl vs base | KL (nats/tok) | top-1 agree |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, t in sorted(results["tools"].items(), key=lambda kv: kv[0] != "llm-compressor 0.14.0.1"):
        print(
            f"| {name}{' (previous run)' if t.get('reused') else ''}"
            f"{' (refused by its check gate)' if t.get('refused_by_check') else ''} | {t['wall_s']} | {t.get('cpu_s', '-')} | {t['peak_rss_mb']} "
            f"| {t['ppl']:.3f} | {100 * (t['ppl'] / base_ppl - 1):+.1f}% "
            f"| {t['kl']:.4f} | {100 * t['top1']:.2f}% |"
        )
    tools = results["tools"]
    lc = tools.get("llm-compressor 0.14.0.1")
    for name in ("llmpress", "llmpress (GPTQ)"):
        if lc is None or name not in tools:
            continue
        lp = tools[name]
        r = results.setdefault("ratios", {})[name] = dict(
            wall=lp["wall_s"] / lc["wall_s"],
            cpu=lp["cpu_s"] / lc["cpu_s"] if lp.get("cpu_s") and lc.get("cpu_s") else None,
            ppl_loss=(lp["ppl"] - base_ppl) / (lc["ppl"] - base_ppl),
            kl=lp["kl"] / lc["kl"],
        )
        print(
            f"\n{name} / llm-compressor: wall {r['wall']:.2f}x"
            + (f", CPU {r['cpu']:.2f}x" if r["cpu"] else "") + f", perplexity loss {r['ppl_loss']:.2f}x, KL {r['kl']:.2f}x"
        )
        ours = Path(lp.get("path") or out / ("llmpress-gptq" if name == "llmpress (GPTQ)" else "llmpress"))
        if (ours / "config.json").is_file() and (out / "llmcompressor" / "config.json").is_file():
            diff, se, n = paired_kl(base, ours, out / "llmcompressor", a.ppl_tokens)
            r["kl_diff"], r["kl_diff_se"] = diff, se
            print(f"KL({name}) - KL(llm-compressor) = {diff:+.5f} ± {se:.5f} nats/token (paired, s.e. over {n} windows)")
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
