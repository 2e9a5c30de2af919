"""The run recipe: base model, schemes, and the settings of every stage, in one small YAML.

    model: default                 # local HF folder, 'default', or a hub id (online)
    schemes: [W4A16, W8A8, FP8_DYNAMIC]   # or mappings of compress fields: {scheme: W4A16, group_size: 64}
    compress: {num_samples: 64}    # compress-recipe fields shared by every scheme
    eval: {tasks: [mmlu, ppl], limit: {mmlu: 100}}   # EvalConfig fields; omit the section to skip eval
    bench: {profiles: 256/128, scale: 0.25}          # BenchConfig fields; omit to skip bench
    card: {license: apache-2.0, developers: Me}      # what the model card states about the release

Everything is checked before any work starts; a mistake names its line.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..compress.recipe import FIELD_NAMES as COMPRESS_FIELDS, Recipe, RecipeError
from ..errors import LlmpressError
from ..yamlfile import read_yaml

SECTIONS = ("model", "schemes", "compress", "eval", "bench", "card", "output")
# Settings a run owns, so the recipe may not set them inside eval / bench.
_EVAL_OWNED = ("model", "base", "base_url", "base_base_url")  # a run serves nothing, so no openai backend
_BENCH_OWNED = ("target", "launch", "base", "base_target")
CARD_FIELDS = ("license", "base_model", "model_name", "repo_id", "developers", "version", "release_date",
               "language", "datasets", "hardware_note")


class RunRecipeError(LlmpressError, ValueError):
    """A run-recipe mistake: names the file, line and key, and the fix."""


@dataclass(frozen=True)
class CardInfo:
    license: str = "other"  # the base model's license (SmolLM2: apache-2.0)
    base_model: str | None = None  # hub id of the base model for the front matter; None: from `model`
    model_name: str | None = None  # card title prefix; None: the base model's name
    repo_id: str | None = None  # where the quantized models will live, e.g. "me/SmolLM2-135M-Instruct-{scheme}"
    developers: str = "llmpress user"
    version: str = "1.0"
    release_date: str | None = None  # printed as given; None: omitted (keeps cards reproducible)
    language: tuple[str, ...] = ("en",)
    datasets: tuple[str, ...] = ()  # hub ids of the calibration data, for the front matter
    hardware_note: str | None = None  # overrides the detected "measured on" sentence


@dataclass(frozen=True)
class RunRecipe:
    model: str = "default"
    schemes: tuple[Recipe, ...] = ()
    eval: dict | None = None  # EvalConfig fields (limit / num_fewshot may be {task: n})
    bench: dict | None = None  # BenchConfig fields
    card: CardInfo = field(default_factory=CardInfo)
    output: str | None = None
    source: str = ""  # the YAML text, copied into the output folder and the card

    def eval_config(self, checkpoint: str):
        from ..eval.run import EvalConfig

        return EvalConfig(model=checkpoint, base=self.model, **(self.eval or {}))

    def bench_config(self, checkpoint: str):
        from ..bench.run import BenchConfig

        return BenchConfig(launch=checkpoint, base=self.model, **(self.bench or {}))


def load(path: str | os.PathLike) -> RunRecipe:
    """Parse and check a run recipe; every mistake raises RunRecipeError naming its line."""
    path = Path(path)
    if not path.is_file():
        raise RunRecipeError(f"run recipe {path} not found; give a YAML file (see recipes/ in the repository)")
    data, lines, text = read_yaml(path, RunRecipeError)
    if not isinstance(data, dict):
        raise RunRecipeError(f"{path}: a run recipe is a mapping with keys {', '.join(SECTIONS)}")

    def fail(where: tuple, msg: str):
        line = next((lines[where[:n]] for n in range(len(where), 0, -1) if where[:n] in lines), "?")
        raise RunRecipeError(f"{path}:{line}: {msg}")

    def known(section: dict, allowed, where: tuple, what: str):
        if not isinstance(section, dict):
            fail(where, f"{'.'.join(map(str, where))} must be a mapping of {what} fields")
        for k in section:
            if k not in allowed:
                fail(where + (k,), f"unknown {what} key {k!r} in {'.'.join(map(str, where)) or 'the recipe'}; "
                                   f"known keys: {', '.join(allowed)}")

    known(data, SECTIONS, (), "run recipe")
    model = str(data.get("model", "default"))
    _check_model(model, lambda msg: fail(("model",), msg))

    shared = data.get("compress") or {}
    known(shared, [f for f in COMPRESS_FIELDS if f != "scheme"], ("compress",), "compress")
    items = data.get("schemes")
    if not items or not isinstance(items, list):
        fail(("schemes",), "schemes must be a non-empty list, e.g. [W4A16, W8A8, FP8_DYNAMIC]")
    schemes, seen = [], set()
    for i, item in enumerate(items):
        fields_ = {"scheme": item} if isinstance(item, str) else item
        known(fields_, COMPRESS_FIELDS, ("schemes", i), "compress")
        if "scheme" not in fields_:
            fail(("schemes", i), "each scheme mapping needs a `scheme:` key")
        try:
            r = Recipe(**{**shared, **fields_})
            r.check_applies(fields_)  # a scheme's own keys; shared `compress:` keys apply where they can
        except (RecipeError, TypeError, ValueError) as e:
            fail(("schemes", i), str(e))
        if r.dataset.endswith((".json", ".jsonl")) and not Path(r.dataset).expanduser().is_file():
            fail(("compress", "dataset") if "dataset" in shared else ("schemes", i), f"calibration file {r.dataset} not found")
        if r.scheme in seen:
            fail(("schemes", i), f"scheme {r.scheme} is listed twice; each scheme gets one output folder")
        seen.add(r.scheme)
        schemes.append(r)
        _check_fits(model, r, lambda msg, i=i: fail(("schemes", i, "group_size") if isinstance(items[i], dict) and "group_size" in items[i]
                                                     else ("compress", "group_size") if "group_size" in shared else ("schemes", i), msg))

    recipe = RunRecipe(model=model, schemes=tuple(schemes), output=data.get("output"), source=text)
    if "eval" in data:
        from ..eval.run import EvalConfig, EvalError

        ev = data["eval"] or {}
        known(ev, [f.name for f in dataclasses.fields(EvalConfig) if f.name not in _EVAL_OWNED + ("task_limits", "task_fewshot")],
              ("eval",), "eval")
        try:
            EvalConfig(model="x", base=model, **ev)
        except (EvalError, TypeError, ValueError) as e:
            fail(("eval",) + _culprit(ev, str(e)), str(e))
        recipe = dataclasses.replace(recipe, eval=dict(ev))
    if "bench" in data:
        from ..bench.run import BenchConfig
        from ..bench.workload import WorkloadError, parse_profiles

        bc = data["bench"] or {}
        known(bc, [f.name for f in dataclasses.fields(BenchConfig) if f.name not in _BENCH_OWNED], ("bench",), "bench")
        try:
            BenchConfig(launch="x", base=model, **bc)
            if bc.get("profiles"):
                parse_profiles(str(bc["profiles"]))
        except (WorkloadError, TypeError, ValueError) as e:
            fail(("bench",) + _culprit(bc, str(e)), str(e))
        recipe = dataclasses.replace(recipe, bench=dict(bc))
    card = data.get("card") or {}
    known(card, CARD_FIELDS, ("card",), "card")
    card = {k: (tuple(v) if isinstance(v, list) else (str(v) if k in ("version", "release_date") and v is not None else v))
            for k, v in card.items()}
    return dataclasses.replace(recipe, card=CardInfo(**card))


def _culprit(section: dict, message: str) -> tuple:
    """The key an error message names first (as `key` or `--key`), to point at its line."""
    found = [(i, k) for k in section for i in [min((j for j in (message.find(k), message.find(k.replace("_", "-"))) if j >= 0), default=-1)]
             if i >= 0]
    return (min(found)[1],) if found else ()


def _check_fits(model: str, r: Recipe, fail) -> None:
    """The compress stage's own structural checks (group_size against the layers' widths), here,
    so that a recipe that cannot run fails with its line before the run folder exists."""
    if r.quant_scheme.weights.strategy != "group":
        return
    from ..compress.skeleton import meta_model
    from ..compress.targets import find_decoder_layers, group_size_problems, target_linears
    from ..models import is_default, resolve_model

    if is_default(model) or Path(model).expanduser().is_dir():
        folder = resolve_model(model)
    else:  # a hub id: its config.json alone, if cached; never a download here (compress checks again)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
        if not isinstance(cached, str):
            return
        folder = Path(cached).parent
    config, skeleton = meta_model(folder)
    prefix, layers = find_decoder_layers(skeleton, config.num_hidden_layers)
    names = list(target_linears(layers[0], f"{prefix}.0", r.targets, r.ignore))
    if bad := group_size_problems(layers[0], names, r.quant_scheme.weights.group_size):
        fail(f"{r.scheme}: group_size {r.quant_scheme.weights.group_size} does not divide the input features of "
             f"{', '.join(bad)}; use a group_size that divides them (e.g. `group_size: 64`) or add those layers to `ignore`")


def _check_model(model: str, fail) -> None:
    from ..models import is_default

    if is_default(model):
        return
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            fail(f"model folder {p} has no config.json; give a Hugging Face model folder")
        return
    looks_local = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_local:
        fail(f"model {model!r} not found; give a local HF folder, 'default', or a hub id like org/name")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(model, "config.json") is None:
            fail(f"model {model!r} is a hub id but HF_HUB_OFFLINE=1 and it is not in the local cache; "
                 "download it first or give a local folder")
