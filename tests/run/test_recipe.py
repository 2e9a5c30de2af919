"""Run recipes: a mistake fails before any work starts and names its line."""
from __future__ import annotations

import pytest

from llmpress.run import RunRecipeError, load


def _write(tmp_path, text: str):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


GOOD = """\
model: {model}
schemes:
  - W4A16
  - scheme: fp8_dynamic
compress:
  num_samples: 4
  max_seq_len: 64
eval:
  tasks: [mmlu, ppl]
  limit: {{mmlu: 3}}
  ppl_tokens: 256
bench:
  profiles: 48/12
  mode: synchronous
card:
  license: apache-2.0
  release_date: 2026-11-23
"""


def test_good_recipe_parses(tmp_path, tiny_llama):
    r = load(_write(tmp_path, GOOD.format(model=tiny_llama)))
    assert [s.scheme for s in r.schemes] == ["W4A16", "FP8_DYNAMIC"]
    assert r.schemes[0].num_samples == 4 and r.schemes[1].max_seq_len == 64
    ev = r.eval_config("ckpt")
    assert ev.tasks == ("mmlu", "ppl") and ev.limit_for("mmlu") == 3 and ev.base == str(tiny_llama)
    assert r.bench_config("ckpt").profiles == "48/12"
    assert r.card.license == "apache-2.0" and r.card.release_date == "2026-11-23"


@pytest.mark.parametrize("edit, line, words", [
    (("  max_seq_len: 64", "  max_seq_len: 64\n  num_sample: 8"), 8, "unknown compress key 'num_sample'"),
    (("  - W4A16", "  - W4A17"), 3, "unknown scheme 'W4A17'"),
    (("  - scheme: fp8_dynamic", "  - scheme: fp8_dynamic\n    colour: red"), 5, "unknown compress key 'colour'"),
    (("  ppl_tokens: 256", "  ppl_tokens: 256\n  tasks_extra: 1"), 12, "unknown eval key 'tasks_extra'"),
    (("  limit: {mmlu: 3}", "  limit: {gsm: 3}"), 10, "not in --tasks"),
    (("  mode: synchronous", "  mode: warp"), 14, "mode 'warp'"),
    (("  license: apache-2.0", "  licence: mit"), 16, "unknown card key 'licence'"),
    (("  max_seq_len: 64", "  max_seq_len: 64\n  dataset: /nope/chats.jsonl"), 8, "/nope/chats.jsonl not found"),
    (("card:", "cards:"), 15, "unknown run recipe key 'cards'"),
    (("  tasks: [mmlu, ppl]", "  tasks: [mmlu, arcc]"), 9, "unknown task 'arcc'"),  # not the --limit message
    (("  - W4A16", "  - scheme: W4A16\n    group_size: 96"), 4, "group_size 96 does not divide"),  # tiny: 128, 256 wide
])
def test_mistakes_name_their_line(tmp_path, tiny_llama, edit, line, words):
    text = GOOD.format(model=tiny_llama).replace(*edit)
    with pytest.raises(RunRecipeError) as e:
        load(_write(tmp_path, text))
    assert f"recipe.yaml:{line}:" in str(e.value) and words in str(e.value), str(e.value)


def test_missing_model_and_file(tmp_path):
    with pytest.raises(RunRecipeError, match=r"recipe.yaml:1: model '/no/such/model' not found"):
        load(_write(tmp_path, GOOD.format(model="/no/such/model")))
    with pytest.raises(RunRecipeError, match="not found"):
        load(tmp_path / "absent.yaml")


def test_repo_recipes_parse(monkeypatch):
    """The shipped recipes stay valid (the hub ones need only be well-formed offline)."""
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))
    assert recipes and recipes[0].name.startswith("00-default")
    r = load(recipes[0])
    assert {s.scheme for s in r.schemes} == {"W4A16", "W8A8", "FP8_DYNAMIC"}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # hub ids are checked against the cache only offline
    for p in recipes[1:]:
        assert load(p).model == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
