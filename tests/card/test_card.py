"""`llmpress run` + `llmpress card` on a tiny model: the card's front matter is YAML that
huggingface_hub accepts offline, every number in its tables is the one in eval.json /
bench.json, the card is a pure function of the run folder, and --report inlines the plots."""
from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("lm_eval")

RECIPE = """\
model: {model}
schemes:
  - scheme: W4A16
    group_size: 64
  - FP8_DYNAMIC
compress: {{num_samples: 4, max_seq_len: 64, dataset: {calib}}}
eval: {{tasks: [mmlu, ppl], limit: {{mmlu: 3}}, num_fewshot: 0, ppl_tokens: 256, max_model_len: 1024, batch_size: 4}}
bench: {{profiles: 32/8, mode: throughput, concurrency: 2, max_requests: 4, sync_requests: 2, max_seconds: 20, cost_per_hour: 1.5}}
card: {{license: apache-2.0, base_model: me/tiny-llama, developers: Tests, release_date: 2026-11-23}}
"""


@pytest.fixture(scope="module")
def run_dir(tiny_llama, calib_file, tmp_path_factory):
    from llmpress.run import load, run

    root = tmp_path_factory.mktemp("card")
    (root / "run.yaml").write_text(RECIPE.format(model=tiny_llama, calib=calib_file))
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMPRESS_CACHE", str(root / "cache"))
    try:
        return run(load(root / "run.yaml"), root / "out", report=True, progress=False, log=lambda _: None)
    finally:
        mp.undo()


def _table(md: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the first Markdown table after `heading`."""
    after = md.split(heading, 1)[1]
    lines = [l for l in after.split("\n\n", 2)[1].splitlines() if l.startswith("|")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]


def test_front_matter_is_a_valid_model_card(run_dir):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    text = (run_dir / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    card = ModelCard(text)  # parses the front matter into ModelCardData, model-index included
    assert card.data.license == "apache-2.0" and card.data.base_model == "me/tiny-llama"
    assert front["base_model_relation"] == "quantized" and {"int4", "fp8", "compressed-tensors", "vllm"} <= set(front["tags"])
    for entry in front["model-index"]:
        name, results = model_index_to_eval_results([entry])
        assert results and all(r.metric_value is not None for r in results)
    single = ModelCard((run_dir / "models" / "W4A16" / "README.md").read_text())
    assert single.data.model_name == "tiny-llama-quantized.w4a16"
    for heading in ("## Model Overview", "### Model Optimizations", "## Use with vLLM", "## Creation", "## Evaluation",
                    "### Accuracy", "## Inference Performance"):
        assert heading in text


def test_every_number_traces_to_eval_and_bench_json(run_dir):
    from llmpress.eval.report import format_cell, format_recovery, format_value

    text = (run_dir / "README.md").read_text()
    evals = {s: json.loads((run_dir / "eval" / s / "eval.json").read_text()) for s in ("W4A16", "FP8_DYNAMIC")}
    rows = _table(text, "### Accuracy")
    assert len(rows) == len(evals["W4A16"]["rows"])
    for cells, i in zip(rows, range(len(rows))):
        r = evals["W4A16"]["rows"][i]
        assert cells[2] == ("" if r.get("n") is None else str(r["n"]))  # questions per row
        assert cells[3] == format_cell(r["base"], r.get("base_stderr"), r.get("score", False), r["metric"])
        if r.get("score") and not r.get("average") and not r["metric"].startswith("HumanEval (pass@10"):
            assert r["n"] and " ± " in cells[3]  # every accuracy row carries its standard error
        for k, s in enumerate(("W4A16", "FP8_DYNAMIC")):
            e = evals[s]["rows"][i]
            assert cells[4 + 2 * k] == format_cell(e["model"], e.get("stderr"), e.get("score", False), e["metric"])
            assert cells[5 + 2 * k] == format_recovery(e)
    front = yaml.safe_load(text.split("---\n")[1])
    shown = {r["metric"]: float(format_value(r["model"], r.get("score", False), r["metric"])) for r in evals["W4A16"]["rows"]
             if r["model"] is not None and not r.get("average")}
    assert {res["metrics"][0]["name"]: res["metrics"][0]["value"] for res in front["model-index"][0]["results"]} == shown

    bench = json.loads((run_dir / "bench" / "W4A16" / "bench.json").read_text())
    section = text.split("### tiny-llama-quantized.w4a16", 1)[1]
    lat = _table(section, "#### Single-stream performance")
    qps = _table(section, "#### Multi-stream performance (saturation)")
    for side, row_l, row_q in (("base", lat[0], qps[0]), ("model", lat[1], qps[1])):
        p = bench["models"][side]["profiles"]["32/8"]
        assert row_l[2] == f"{p['latency_s']:.2f}" and row_q[2] == f"{p['max_qps']:.3g}"
        assert row_l[3] == f"{3600 / (p['latency_s'] * 1.5):.0f}"  # QPD as the cards define it
    assert "$1.5/hour" in section and "cores" in section


def test_card_is_a_pure_function_of_the_folder(run_dir):
    from llmpress.card import write_cards

    before = {p: p.read_bytes() for p in [run_dir / "README.md", *sorted((run_dir / "models").glob("*/README.md"))]}
    write_cards(run_dir)
    assert {p: p.read_bytes() for p in before} == before


def test_report_inlines_plots(run_dir):
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html and "Model Overview" in html


def test_card_of_a_folder_that_is_not_a_run(tmp_path):
    from llmpress.card import CardError, write_cards

    with pytest.raises(CardError, match="not an llmpress run folder"):
        write_cards(tmp_path)
