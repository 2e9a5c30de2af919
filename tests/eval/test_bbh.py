"""The BBH-style task's scoring through lm-eval itself: a byte-level BPE model answers the
few-shot "A:" prompt with a leading space (" (B)"), and a right answer must count as right."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

import yaml  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402

from llmpress.eval import bbh  # noqa: E402
from llmpress.eval.run import PRIMARY  # noqa: E402


class ScriptedLM(LM):
    """Answers each BBH prompt from a table keyed by the question (the test's fixed model)."""

    def __init__(self, answers: dict[str, str]):
        super().__init__()
        self.answers = answers
        self.prompts: list[str] = []

    def generate_until(self, requests):
        out = []
        for r in requests:
            prompt = r.args[0]
            self.prompts.append(prompt)
            question = prompt.rsplit("Q: ", 1)[1].rsplit("\nA:", 1)[0]
            out.append(self.answers[question])
        return out

    def loglikelihood(self, requests):
        raise AssertionError("BBH-style tasks generate")

    def loglikelihood_rolling(self, requests):
        raise AssertionError("BBH-style tasks generate")


def test_bbh_scores_answers_with_bpe_leading_space(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = [{"input": f"Which sentence has the correct adjective order:\nOptions:\n(A) q{i} first\n(B) q{i} second",
             "target": "(A)" if i % 2 else "(B)"} for i in range(6)]
    data = tmp_path / "bbh-hyperbaton.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    spec = bbh.task_yaml("hyperbaton", data)
    (tmp_path / "llmpress_bbh_hyperbaton.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (tmp_path / "llmpress_bbh.yaml").write_text(yaml.safe_dump(bbh.group_yaml([spec["task"]]), sort_keys=False))

    # right with a leading space, right with a trailing newline, right bare, and three wrong ones
    replies = [" (B)", " (A)\n", "(B)", " (B)", " (A)", "(A) because"]
    lm = ScriptedLM({d["input"]: r for d, r in zip(docs, replies)})
    res = simple_evaluate(model=lm, tasks=["llmpress_bbh"], task_manager=TaskManager(include_path=str(tmp_path)),
                          bootstrap_iters=0, log_samples=False)

    _, _, key = PRIMARY["llmpress_bbh"]
    assert res["results"]["llmpress_bbh_hyperbaton"][key] == pytest.approx(3 / 6)
    assert res["groups"]["llmpress_bbh"][key] == pytest.approx(3 / 6)  # the key run.py reads for the card
    # lm-eval's 3 BBH shots precede every question, in its "Q: ...\nA:" format
    assert len(lm.prompts) == 6 and all(p.count("Q: ") == 4 and p.endswith("\nA:") for p in lm.prompts)
