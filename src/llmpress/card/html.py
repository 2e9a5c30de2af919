"""`llmpress run --report`: the card as one self-contained HTML page, plots inline."""
from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em}
td{text-align:right}td:first-child,td:nth-child(2){text-align:left}th{background:#f3f3f3}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto}code{font-size:.9em}img{max-width:100%;border:1px solid #eee}
details{margin:1em 0}"""


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def write_html(run, card: Path) -> Path:
    """report.html beside the card: the front matter folded away, the body rendered, every PNG of
    the run's eval and bench folders inlined under "Plots"."""
    import markdown

    text = card.read_text()
    _, front, body = text.split("---\n", 2) if text.startswith("---\n") else ("", "", text)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run.base_name)} report</title>"
             f"<style>{STYLE}</style></head><body>",
             markdown.markdown(body, extensions=["tables", "fenced_code"]),
             "<h2>Plots</h2>"]
    for s in run.schemes:
        for stage, names in (("eval", ["eval.png"]), ("bench", ["latency.png", "throughput.png"])):
            for name in names:
                p = run.root / stage / s / name
                if p.is_file():
                    parts.append(_img(p, f"{s}: {stage} / {name}"))
    parts.append(f"<details><summary>Front matter (YAML)</summary><pre>{html.escape(front)}</pre></details></body></html>")
    out = run.root / "report.html"
    out.write_text("\n".join(parts))
    return out
