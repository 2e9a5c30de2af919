"""bench.json, bench.md (the cards' single-stream and multi-stream tables) and PNG plots."""
from __future__ import annotations

import json
from pathlib import Path

from .cost import cost_reduction, qpd_multi, qpd_single


def _row(res: dict, labels: list[str], key: str, usd: float | None, single: bool) -> tuple[list[float | None], list[str]]:
    qpds, cells = [], []
    for lab in labels:
        p = res["profiles"].get(lab, {})
        v = p.get(key)
        q = (qpd_single(v, usd) if single else qpd_multi(v, usd)) if (v and usd) else None
        qpds.append(q)
        cells += ["—" if v is None else (f"{v:.2f}" if single else f"{v:.3g}"), "—" if q is None else f"{q:.0f}"]
    return qpds, cells


def tables(out: dict, usd: float | None, level: int = 2, names: dict[str, str] | None = None) -> str:
    models = out["models"]
    labels = list(models["model"]["profiles"])
    names = {s: (names or {}).get(s) or m["model"] for s, m in models.items()}
    lines = []
    for title, key, single, unit in (("Single-stream performance", "latency_s", True, "Latency (s)"),
                                     ("Multi-stream performance (saturation)", "max_qps", False, "Maximum throughput (QPS)")):
        head = ["Model", "Average cost reduction"] + [f"{lab} {h}" for lab in labels for h in (unit, "QPD")]
        lines += [f"\n{'#' * level} {title}\n", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        base_q = _row(models["base"], labels, key, usd, single)[0] if "base" in models else None
        for side in ("base", "model"):
            if side not in models:
                continue
            q, cells = _row(models[side], labels, key, usd, single)
            red = "---" if side == "base" or base_q is None else (lambda r: "—" if r is None else f"{r:.2f}")(cost_reduction(q, base_q))
            lines.append("| " + " | ".join([names[side] + (" (cached)" if models[side].get("cached") else ""), red] + cells) + " |")
    return "\n".join(lines)


def detail(out: dict) -> str:
    lines = [
        "\n## Every run\n",
        "| model | profile | run | requests (counted) | errors | req/s | out tok/s | TTFT p50 s | ITL p50 ms | latency p50 s | latency p99 s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for side, m in out["models"].items():
        for lab, p in m["profiles"].items():
            for run, s in p["runs"].items():
                f = lambda d, k, x=1.0: "—" if not d else f"{d[k] * x:.3f}"  # noqa: E731
                lines.append(
                    f"| {m['model']} | {lab} | {run} | {s['requests']} ({s['counted']}) | {s['errors']} | {s['requests_per_s']:.3f} "
                    f"| {s['output_tokens_per_s']:.1f} | {f(s['ttft_s'], 'p50')} | {f(s['itl_s'], 'p50', 1000)} "
                    f"| {f(s['latency_s'], 'p50')} | {f(s['latency_s'], 'p99')} |"
                )
    return "\n".join(lines)


def plots(out: dict, folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    fig, ax = plt.subplots(figsize=(8, 4))
    for side, m in out["models"].items():
        labs = list(m["profiles"])
        ax.plot(labs, [m["profiles"][l]["latency_s"] or float("nan") for l in labs], marker="o", label=m["model"])
    ax.set_ylabel("single-stream latency (s)"), ax.set_xlabel("profile (prompt/output tokens)"), ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(folder / "latency.png", dpi=120), plt.close(fig)
    made.append("latency.png")
    fig, ax = plt.subplots(figsize=(8, 4))
    for side, m in out["models"].items():
        for lab, p in m["profiles"].items():
            pts = sorted((s["requests_per_s"], s["output_tokens_per_s"]) for s in p["runs"].values())
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker=".", label=f"{m['model']} {lab}")
    ax.set_xlabel("completed requests/s"), ax.set_ylabel("output tokens/s"), ax.legend(fontsize=7)
    fig.tight_layout(), fig.savefig(folder / "throughput.png", dpi=120), plt.close(fig)
    made.append("throughput.png")
    return made


def write(out: dict, folder: Path, usd: float | None) -> None:
    folder = Path(folder)
    md = [f"# Inference performance\n\nPrice: {out['price_source']}" + (f" (${usd}/hour)" if usd else "") + "."]
    if out["skipped_profiles"]:
        md.append("Skipped: " + "; ".join(f"{s['profile']} ({s['why']})" for s in out["skipped_profiles"]) + ".")
    md.append(
        "Single-stream latency is the median over synchronous requests; QPS is completed requests/s with the "
        f"server saturated ({out['config']['concurrency']} requests in flight); QPD as in the cards."
    )
    md += [tables(out, usd), detail(out)]
    (folder / "bench.md").write_text("\n".join(md) + "\n")
    out["plots"] = plots(out, folder)
    (folder / "bench.json").write_text(json.dumps(out, indent=2, default=str))
