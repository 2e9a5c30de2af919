"""`llmpress eval` end to end on tiny models: the cards' table with recovery, eval.json /
eval.md / eval.png written atomically, base results reused from the cache, and the
recovery rules (quantized ÷ base; "—" for a zero base; perplexity inverted)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from llmpress.eval.report import markdown, recovery  # noqa: E402


def test_recovery_rules():
    assert recovery(0.5, 0.4) == pytest.approx(1.25)
    assert recovery(0.0, 0.0) is None and recovery(0.3, 0.0) is None  # the cards print "---"
    assert recovery(31.0, 30.0, higher_is_better=False) == pytest.approx(30 / 31)
    md = markdown([dict(category="Math", metric="GSM", model=0.0, base=0.0, score=True)], {"model": "q", "base": "b"}, {}, {})
    assert "| Math | GSM |  | 0.00 | 0.00 | — |" in md


def test_standard_errors_and_noise():
    from llmpress.eval.report import stderr, table_rows, within_noise

    assert stderr(0.5, 101) == pytest.approx(0.05) and stderr(0.5, 1) is None and stderr(1.0, 50) == 0
    # lm-eval's own: the sample standard deviation of the 0/1 scores over sqrt(n)
    import statistics

    scores = [1] * 13 + [0] * 27
    assert stderr(13 / 40, 40) == pytest.approx(statistics.stdev(scores) / 40 ** 0.5)

    def side(acc, n):
        return {"mmlu": {"category": "Knowledge", "metric": "MMLU", "key": "acc,none", "value": acc,
                         "n_samples": {"a": {"original": 99, "effective": n // 2}, "b": {"original": 99, "effective": n - n // 2}}}}

    # BBH-like: 1 vs 2 of 4 right, "200% recovery", is noise; 25% vs 75% of 400 is not
    small = table_rows(("mmlu",), {"model": side(0.5, 4), "base": side(0.25, 4)})[0]
    big = table_rows(("mmlu",), {"model": side(0.75, 400), "base": side(0.25, 400)})[0]
    assert small["n"] == 4 and big["n"] == 400
    assert within_noise(small) is True and within_noise(big) is False
    md = markdown([small, big], {"model": "q", "base": "b"}, {}, {})
    assert "| 4 | 25.00 ± 25.00 | 50.00 ± 28.87 | 200.0% (within noise) |" in md
    assert "| 400 | 25.00 ± 2.17 | 75.00 ± 2.17 | 300.0% |" in md and "cannot separate" in md


@pytest.fixture(scope="module")
def quantized(tiny_llama, tmp_path_factory, calib_file):
    from llmpress.compress import Recipe, compress

    return compress(str(tiny_llama), Recipe(scheme="W4A16", group_size=64, num_samples=4, max_seq_len=64, dataset=str(calib_file)),
                    tmp_path_factory.mktemp("q") / "tiny-w4a16", progress=False)


def test_eval_table_cache_and_outputs(tiny_llama, quantized, tmp_path, monkeypatch):
    from llmpress.eval.run import EvalConfig, evaluate

    monkeypatch.setenv("LLMPRESS_CACHE", str(tmp_path / "cache"))
    cfg = EvalConfig(model=str(quantized), base=str(tiny_llama), tasks=("mmlu", "gsm", "humaneval", "ppl"), limit=3,
                     num_fewshot=1, humaneval_samples=0, ppl_tokens=256, max_model_len=1024, batch_size=4)
    res = evaluate(cfg, tmp_path / "out", progress=False)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"eval.json", "eval.md", "eval.png"} <= files
    data = json.loads((tmp_path / "out" / "eval.json").read_text())
    metrics = [r["metric"] for r in data["rows"]]
    assert any(m.startswith("MMLU-style") for m in metrics) and any(m.startswith("GSM-style") for m in metrics)
    assert any(m.startswith("HumanEval") for m in metrics) and any(m.startswith("Perplexity") for m in metrics)
    for r in data["rows"]:
        if r["metric"].startswith("MMLU-style"):
            assert 0 <= r["model"] <= 1 and 0 <= r["base"] <= 1
            assert r["recovery"] == (None if r["base"] == 0 else pytest.approx(r["model"] / r["base"]))
        if r["metric"].startswith("Perplexity"):
            assert r["recovery"] == pytest.approx(r["base"] / r["model"])
    assert res.details["tasks"]["base"]["mmlu"].get("cached") is None
    # an existing output is kept without overwrite
    from llmpress.checkpoint.shards import OutputExistsError

    with pytest.raises(OutputExistsError):
        evaluate(cfg, tmp_path / "out", progress=False)
    # the base again (e.g. for another scheme): every base task comes from the cache
    again = evaluate(cfg, tmp_path / "out2", progress=False)
    assert all(again.details["tasks"]["base"][t].get("cached") for t in ("mmlu", "gsm", "humaneval"))
    assert [r["base"] for r in again.rows] == [r["base"] for r in res.rows]


@pytest.mark.parametrize("kw, words", [
    (dict(num_fewshot=-1), "num_fewshot must be >= 0"),
    (dict(task_fewshot=(("mmlu", -2),)), "num_fewshot for mmlu must be >= 0"),
    (dict(task_fewshot=(("gsm", 5),)), "--num-fewshot names task(s) gsm"),
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(fewshot_as_multiturn=True), "needs --apply-chat-template"),
])
def test_bad_settings_are_named(kw, words):
    from llmpress.eval.run import EvalConfig, EvalError

    with pytest.raises(EvalError) as e:
        EvalConfig(model="m", tasks=("mmlu",), **kw)
    assert words in str(e.value)


def test_fingerprint_survives_a_cut_short_memo(tiny_llama, tmp_path, monkeypatch):
    """A run SIGKILLed while writing the fingerprint memo used to leave broken JSON that made
    every later run fail before its first stage; the memo is a cache and is rebuilt."""
    from llmpress.models import model_fingerprint

    monkeypatch.setenv("LLMPRESS_CACHE", str(tmp_path / "cache"))
    fp = model_fingerprint(tiny_llama)
    memo = tmp_path / "cache" / "eval" / "fingerprints.json"
    assert json.loads(memo.read_text())  # written whole
    memo.write_text(memo.read_text()[:17])  # cut short mid-write
    assert model_fingerprint(tiny_llama) == fp
    assert json.loads(memo.read_text()) and not list(memo.parent.glob(".*.tmp"))
