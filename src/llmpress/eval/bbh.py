"""BBH-style tasks: BIG-bench Hard (Suzgun et al. 2022) rebuilt offline from the BIG-bench
originals in the `bigbench` 1.0.0 sdist, with lm-eval's own 3-shot BBH prompts.

BBH is a 250-question-per-task rewrite of 23 BIG-bench tasks; the BBH files themselves
are not on PyPI. 20 of those tasks ship as JSON in the bigbench sdist (boolean_expressions,
multistep_arithmetic_two and web_of_lies are programmatic there). For each, questions are
taken from BIG-bench (seeded sample of up to 250) and rendered in BBH's format:
multiple-choice tasks whose BBH answers are letters get "Options:\n(A) ..." and an "(X)"
target, the others keep the answer word in BBH's vocabulary (Yes/No, valid/invalid, ...).
The 3 few-shot examples and the description are lm-eval's `bbh_fewshot_<task>` ones, so
prompts match lm-eval's; the questions are BIG-bench's, so scores are BBH-*style*, not
comparable digit for digit with published BBH numbers.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from .tasks import TaskDataError

SDIST = "bigbench-1.0.0.tar.gz"
# lm-eval BBH task -> (BIG-bench task folder, answer vocabulary map BIG-bench -> BBH)
TASKS: dict[str, tuple[str, dict[str, str]]] = {
    "causal_judgement": ("causal_judgment", {}),
    "date_understanding": ("date_understanding", {}),
    "disambiguation_qa": ("disambiguation_qa", {}),
    "dyck_languages": ("dyck_languages", {}),
    "formal_fallacies": ("formal_fallacies_syllogisms_negation", {}),
    "geometric_shapes": ("geometric_shapes", {}),
    "hyperbaton": ("hyperbaton", {}),
    "logical_deduction_five_objects": ("logical_deduction/five_objects", {}),
    "logical_deduction_seven_objects": ("logical_deduction/seven_objects", {}),
    "logical_deduction_three_objects": ("logical_deduction/three_objects", {}),
    "movie_recommendation": ("movie_recommendation", {}),
    "navigate": ("navigate", {"True": "Yes", "False": "No"}),
    "object_counting": ("object_counting", {}),
    "penguins_in_a_table": ("penguins_in_a_table", {}),
    "reasoning_about_colored_objects": ("reasoning_about_colored_objects", {}),
    "ruin_names": ("ruin_names", {}),
    "salient_translation_error_detection": ("salient_translation_error_detection", {}),
    "snarks": ("snarks", {}),
    "sports_understanding": ("sports_understanding", {"plausible": "yes", "implausible": "no"}),
    "temporal_sequences": ("temporal_sequences", {}),
    "tracking_shuffled_objects_five_objects": ("tracking_shuffled_objects/five_objects", {}),
    "tracking_shuffled_objects_seven_objects": ("tracking_shuffled_objects/seven_objects", {}),
    "tracking_shuffled_objects_three_objects": ("tracking_shuffled_objects/three_objects", {}),
    "word_sorting": ("word_sorting", {}),
}
PER_TASK = 250  # BBH's size
# BIG-bench inputs that lack the question BBH states (BBH's wording, from its prompts).
QUESTION = {
    "sports_understanding": 'Is the following sentence plausible? "{}"',
    "navigate": "If you follow these instructions, do you return to the starting point? {}\nOptions:\n- Yes\n- No",
    "dyck_languages": "Complete the rest of the sequence, making sure that the parentheses are closed properly. Input: {}",
    "word_sorting": "Sort the following words alphabetically: List: {}",
    "disambiguation_qa": "In the following sentences, explain the antecedent of the pronoun (which thing the pronoun refers to), "
                         "or state that it is ambiguous.\nSentence: {}",
    "movie_recommendation": "Find a movie similar to {}",
}


def _extracted(task_dir: str, cache: Path) -> Path:
    return cache / "bigbench" / (task_dir.replace("/", "__") + ".json")


def check_source(cache: Path) -> None:
    """Before any model loads: BIG-bench's task files are extracted in `cache`, or the sdist is there
    (downloaded now when missing). Raises TaskDataError naming the fix, so a run without them stops
    at once, not after its compress stages."""
    if not all(_extracted(d, cache).is_file() for d, _ in TASKS.values()):
        _sdist(cache)


def _sdist(cache: Path) -> Path:
    sdist = cache / "bigbench" / SDIST
    if not sdist.is_file():
        sdist.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "bigbench==1.0.0", "-d", str(sdist.parent)]
        if subprocess.run(cmd, capture_output=True).returncode != 0 or not sdist.is_file():
            raise TaskDataError(f"BBH-style tasks need the bigbench 1.0.0 sdist, which pip could not download; get it with "
                                f"`{' '.join(cmd[2:])}` (358 MB, from PyPI) or copy {SDIST} into {sdist.parent}, or leave "
                                "bbh out of the tasks")
    return sdist


def bigbench_json(task_dir: str, cache: Path) -> dict:
    """BIG-bench's task.json for `task_dir`, extracted once from the sdist into `cache`."""
    dest = _extracted(task_dir, cache)
    if dest.is_file():
        return json.loads(dest.read_text())
    with tarfile.open(_sdist(cache)) as tar:
        for m in tar.getmembers():
            if m.name.endswith("/task.json") and "/benchmark_tasks/" in m.name:
                rel = m.name.split("/benchmark_tasks/", 1)[1][: -len("/task.json")]
                _extracted(rel, cache).write_bytes(tar.extractfile(m).read())
    if not dest.is_file():
        raise TaskDataError(f"{SDIST} has no benchmark_tasks/{task_dir}/task.json")
    return json.loads(dest.read_text())


FILTER = "strip"  # the metric key is exact_match,strip


def task_yaml(task: str, data: Path) -> dict:
    """lm-eval's bbh_fewshot YAML for `task`, reading our documents from `data` (JSONL).

    The answer is scored after stripping surrounding whitespace. lm-eval's template compares the
    raw continuation of "A:" with the target, and a byte-level BPE tokenizer (GPT-2, Llama 3,
    SmolLM2) decodes that continuation with its leading space, " (B)" != "(B)": every answer
    would score 0. SentencePiece tokenizers (Llama 2) drop the space on decode, which is why
    the template works there; stripping gives both the same score."""
    spec = lm_eval_bbh_yaml(task)
    spec.pop("dataset_name", None)
    spec.update(task=f"llmpress_bbh_{task}", dataset_path="json", dataset_kwargs={"data_files": {"test": str(data)}},
                test_split="test", metadata={"version": 2.0, "source": f"bigbench 1.0.0 {TASKS[task][0]}"},
                filter_list=[{"name": FILTER, "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}])
    return spec


def group_yaml(names: list[str]) -> dict:
    """The `llmpress_bbh` group: exact match over every subtask, weighted by its size."""
    return {"group": "llmpress_bbh", "task": names,
            "aggregate_metric_list": [{"metric": "exact_match", "aggregation": "mean", "weight_by_size": True, "filter_list": FILTER}],
            "metadata": {"version": 2.0}}


def lm_eval_bbh_yaml(task: str) -> dict:
    """lm-eval's bbh_fewshot_<task> YAML merged with its template (plain YAML, no !function)."""
    import lm_eval

    folder = Path(lm_eval.__file__).parent / "tasks" / "bbh" / "fewshot"
    spec = yaml.safe_load((folder / f"{task}.yaml").read_text())
    template = yaml.safe_load((folder / spec.pop("include")).read_text())
    return {**template, **spec}


def documents(task: str, cache: Path, seed: int = 1234, limit: int = PER_TASK) -> list[dict]:
    src, vocab = TASKS[task]
    spec = lm_eval_bbh_yaml(task)
    lettered = all(str(s["target"]).startswith("(") for s in spec["fewshot_config"]["samples"])
    examples = bigbench_json(src, cache)["examples"]
    rng = random.Random(f"{seed}:{task}")
    rng.shuffle(examples)
    docs = []
    for e in examples[:limit]:
        question = QUESTION.get(task, "{}").format(e["input"].strip())
        if "target_scores" in e and lettered:
            options = list(e["target_scores"])
            right = max(options, key=lambda o: e["target_scores"][o])
            rng.shuffle(options)  # BIG-bench often lists the right answer first
            letters = [chr(ord("A") + i) for i in range(len(options))]
            question += "\nOptions:\n" + "\n".join(f"({L}) {o}" for L, o in zip(letters, options))
            target = f"({letters[options.index(right)]})"
        elif "target_scores" in e:
            target = max(e["target_scores"], key=e["target_scores"].get)
        else:
            target = e["target"][-1] if isinstance(e["target"], list) else e["target"]  # object_counting: ["three", "3"]
        docs.append({"input": question, "target": vocab.get(target, target)})
    return docs


def prepare(folder: Path, cache: Path, seed: int = 1234, limit: int = PER_TASK) -> list[str]:
    """Write every available BBH-style task (JSONL + YAML) and a group `llmpress_bbh` into
    `folder`; returns the task names (group first)."""
    names = []
    for task in TASKS:
        data = folder / f"bbh-{task}.jsonl"
        if not data.is_file():
            tmp = data.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(d) + "\n" for d in documents(task, cache, seed, limit)))
            tmp.replace(data)
        spec = task_yaml(task, data)
        (folder / f"llmpress_bbh_{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        names.append(spec["task"])
    group = group_yaml(names)
    (folder / "llmpress_bbh.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return ["llmpress_bbh", *names]
