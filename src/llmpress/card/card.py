"""`llmpress card RUN_DIR`: the model card of a run, shaped like the seed cards.

Every number comes from a file of the run: accuracy from eval/<S>/eval.json, speed and
cost from bench/<S>/bench.json, sizes from models/<S>/llmpress_compress.json, hardware
from run.json. Nothing is measured here, so a card is a pure function of its folder:
writing it twice gives the same bytes.

Writes RUN_DIR/README.md (every scheme side by side) and models/<S>/README.md (one card
per checkpoint, the file a user publishes with it).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import LlmpressError

from ..bench.report import tables as bench_tables
from ..eval.commands import CARD_INTRO, card_commands
from ..eval.report import DEFAULT_MODEL_NOTE, NOISE_NOTE, format_cell, format_n, format_recovery, format_value

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHAREGPT_HUB_ID = "anon8231489123/ShareGPT_Vicuna_unfiltered"
# The seed cards' naming: <base>-quantized.w4a16, <base>-quantized.w8a8, <base>-FP8-dynamic.
SUFFIX = {"W4A16": "quantized.w4a16", "W4A16_ASYM": "quantized.w4a16-asym", "W8A16": "quantized.w8a16",
          "W8A8": "quantized.w8a8", "FP8_DYNAMIC": "FP8-dynamic"}
TAGS = {"W4A16": ["int4", "w4a16", "gptq"], "W4A16_ASYM": ["int4", "w4a16", "gptq"], "W8A16": ["int8", "w8a16", "gptq"],
        "W8A8": ["int8", "w8a8", "smoothquant", "gptq"], "FP8_DYNAMIC": ["fp8", "fp8-dynamic"]}


class CardError(LlmpressError, ValueError):
    """The folder is not a finished run; the message says what is missing."""


@dataclass
class Run:
    """What a run folder holds, read once."""

    root: Path
    recipe: dict  # the run recipe YAML (model, schemes, card, ...)
    schemes: list[str]
    ledger: dict
    compress: dict[str, dict] = field(default_factory=dict)  # llmpress_compress.json
    ckpt_recipe: dict[str, str] = field(default_factory=dict)  # models/<S>/recipe.yaml text
    quant_config: dict[str, dict] = field(default_factory=dict)
    evals: dict[str, dict] = field(default_factory=dict)
    benches: dict[str, dict] = field(default_factory=dict)
    architecture: str = "LlamaForCausalLM"
    recipe_text: str = ""

    @classmethod
    def load(cls, root: str | Path) -> "Run":
        root = Path(root)
        if not (root / "run.json").is_file() or not (root / "recipe.yaml").is_file():
            raise CardError(f"{root} is not an llmpress run folder (no run.json / recipe.yaml); run `llmpress run RECIPE.yaml --output {root}` first")
        recipe = yaml.safe_load((root / "recipe.yaml").read_text()) or {}
        schemes = [(s if isinstance(s, str) else s["scheme"]).upper() for s in recipe.get("schemes", [])]
        run = cls(root, recipe, schemes, json.loads((root / "run.json").read_text()), recipe_text=(root / "recipe.yaml").read_text())
        for s in schemes:
            m = root / "models" / s
            if not (m / "llmpress_compress.json").is_file():
                raise CardError(f"{m} is missing: the compress stage of {s} has not finished; rerun `llmpress run`")
            run.compress[s] = json.loads((m / "llmpress_compress.json").read_text())
            run.ckpt_recipe[s] = (m / "recipe.yaml").read_text()
            cfg = json.loads((m / "config.json").read_text())
            run.quant_config[s] = cfg.get("quantization_config", {})
            run.architecture = (cfg.get("architectures") or [run.architecture])[0]
            for name, store in (("eval", run.evals), ("bench", run.benches)):
                f = root / name / s / f"{name}.json"
                if f.is_file():
                    store[s] = json.loads(f.read_text())
        return run

    # -- names ------------------------------------------------------------------------
    @property
    def info(self) -> dict:
        return self.recipe.get("card") or {}

    @property
    def model(self) -> str:
        return str(self.recipe.get("model", "default"))

    @property
    def is_default(self) -> bool:
        return self.model in ("default", "")

    @property
    def base_hub_id(self) -> str | None:
        if self.info.get("base_model"):
            return self.info["base_model"]
        if self.is_default:
            return DEFAULT_HUB_ID
        return self.model if re.fullmatch(r"[\w.-]+/[\w.-]+", self.model) and not Path(self.model).exists() else None

    @property
    def base_name(self) -> str:
        return self.info.get("model_name") or (self.base_hub_id or self.model.rstrip("/")).split("/")[-1]

    def quant_name(self, s: str) -> str:
        return f"{self.base_name}-{SUFFIX.get(s, s.lower())}"

    def repo(self, s: str) -> str:
        """How a user loads the checkpoint: the repo id the user gave, else the local folder."""
        rid = self.info.get("repo_id")
        if rid:
            return rid.format(scheme=SUFFIX.get(s, s.lower()), name=self.quant_name(s))
        return f"models/{s}"


# -- sections --------------------------------------------------------------------------
def front_matter(run: Run, schemes: list[str]) -> dict:
    tags = ["llmpress", "compressed-tensors", "vllm", "quantized"] + [t for s in schemes for t in TAGS.get(s, [])]
    datasets = list(run.info.get("datasets") or [])
    if not datasets and any("sharegpt" in yaml.safe_load(run.ckpt_recipe[s]).get("dataset", "") for s in schemes):
        datasets = [SHAREGPT_HUB_ID]
    fm = {"license": run.info.get("license", "other")}
    if run.base_hub_id:
        fm.update(base_model=run.base_hub_id, base_model_relation="quantized")
    fm.update(tags=list(dict.fromkeys(tags)), library_name="transformers", pipeline_tag="text-generation",
              language=list(run.info.get("language") or ["en"]))
    if datasets:
        fm["datasets"] = datasets
    index = [{"name": run.quant_name(s), "results": _index_results(run.evals[s])} for s in schemes if s in run.evals]
    if index := [e for e in index if e["results"]]:
        fm["model-index"] = index
    return fm


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _index_results(ev: dict) -> list[dict]:
    out = []
    for r in ev["rows"]:
        if r.get("average") or r["model"] is None:
            continue
        shown = format_value(r["model"], r.get("score", False), r["metric"])  # the number the table prints
        out.append({"task": {"type": "text-generation", "name": "Text Generation"},
                    "dataset": {"name": r["metric"], "type": _slug(r["metric"].split("(")[0])},
                    "metrics": [{"type": _slug(r["metric"]), "value": float(shown), "name": r["metric"]}]})
    return out


def _bits(q: dict) -> tuple[str, str]:
    """('INT4', 'None') etc. from a compressed-tensors quantization_config."""
    group = next(iter(q.get("config_groups", {}).values()), {})
    w, a = group.get("weights") or {}, group.get("input_activations")
    name = lambda args: f"{'FP' if args['type'] == 'float' else 'INT'}{args['num_bits']}"  # noqa: E731
    return name(w) if w else "None", name(a) if a else "None (16-bit)"


def optimizations(run: Run, s: str) -> str:
    r = yaml.safe_load(run.ckpt_recipe[s])
    q = run.quant_config[s]
    group = next(iter(q.get("config_groups", {}).values()), {})
    w, a = group.get("weights") or {}, group.get("input_activations")
    st = run.compress[s]
    src, dst = st["source_bytes"], st["output_bytes"]
    wdesc = {"group": f"per-group scheme (group size {w.get('group_size')})", "channel": "per-channel scheme",
             "tensor": "per-tensor scheme"}.get(w.get("strategy"), w.get("strategy", ""))
    text = [
        f"This model was obtained by quantizing the weights{' and activations' if a else ''} of "
        f"{run.base_name} to {_bits(q)[0]} data type"
        + (f" (activations: {_bits(q)[1]})" if a else "")
        + f". This reduces the number of bits per weight parameter from 16 to {w.get('num_bits')}; "
        f"measured on disk the checkpoint went from {src / 1e6:.1f} MB to {dst / 1e6:.1f} MB "
        f"({100 * (1 - dst / src):.1f}% smaller; embeddings and lm_head stay 16-bit).",
        f"Only the weights{' and activations' if a else ''} of the linear operators within transformer blocks are quantized "
        f"(ignored: {', '.join(q.get('ignore') or []) or 'none'}). Weights use a "
        f"{'symmetric' if w.get('symmetric') else 'asymmetric'} {wdesc}"
        + (
            f"; activations a {'symmetric' if a.get('symmetric') else 'asymmetric'} per-{a.get('strategy')} scheme, "
            f"{'dynamic (computed at run time)' if a.get('dynamic') else 'static'}"
            if a
            else ""
        )
        + ".",
    ]
    algo = []
    if a and a.get("type") == "int" and r.get("smoothing_strength"):
        algo.append(f"SmoothQuant (α = {r['smoothing_strength']}) folds activation outliers into the weights")
    algorithm = r.get("algorithm")  # compress's recipe key (None: `gptq` decides)
    uses_gptq = ("gptq" in algorithm if algorithm else
                 r.get("gptq") if r.get("gptq") is not None else w.get("type") != "float")
    if algorithm in ("awq", "awq+gptq"):
        algo.append(
            f"AWQ (Lin et al. 2023) scales the input channels that carry large activations before quantizing, "
            f"folding the inverse scales into the preceding norm or Linear; its scale search used "
            f"{r.get('num_samples')} calibration samples of up to {r.get('max_seq_len')} tokens from {r.get('dataset')}"
        )
    if uses_gptq:
        algo.append(
            f"GPTQ (dampening {r.get('dampening_frac')}, block 128{', static act-order' if w.get('actorder') else ''}, "
            f"{w.get('observer') or 'minmax'} scale observer) quantizes the weights with "
            f"{r.get('num_samples')} calibration samples of up to {r.get('max_seq_len')} tokens from {r.get('dataset')}, "
            "rendered with the model's chat template"
        )
    else:
        algo.append(f"weights are rounded to nearest with {w.get('observer') or 'minmax'} scales"
                    + ("" if algorithm in ("awq", "awq+gptq") else "; no calibration data"))
    text.append("Algorithm: " + "; then ".join(algo) + ". llmpress wrote the compressed-tensors checkpoint.")
    return "\n\n".join(text)


def use_with_vllm(run: Run, s: str) -> str:
    model = run.repo(s)
    return f"""This model can be deployed with [vLLM](https://docs.vllm.ai/en/latest/), which reads compressed-tensors checkpoints unchanged:

```python
from transformers import AutoTokenizer
from vllm import LLM, SamplingParams

model_name = "{model}"
tokenizer = AutoTokenizer.from_pretrained(model_name)
sampling_params = SamplingParams(temperature=0.6, max_tokens=256, stop_token_ids=[tokenizer.eos_token_id])
llm = LLM(model=model_name, tensor_parallel_size=1)
messages_list = [[{{"role": "user", "content": "Who are you? Please respond in pirate speak!"}}]]
prompts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages_list]
outputs = llm.generate(prompts, sampling_params)
print([o.outputs[0].text for o in outputs])
```

vLLM also serves it with an OpenAI-compatible API (`vllm serve {model}`). On any machine, GPU or not, llmpress runs it with its embedded engine:

```python
from llmpress import LLM, SamplingParams

llm = LLM("{model}")
print(llm.chat([{{"role": "user", "content": "Who are you?"}}], SamplingParams(max_tokens=128))[0].outputs[0].text)
```

or from the shell: `llmpress chat {model}`, `llmpress serve {model}` (OpenAI-compatible, 127.0.0.1:8000)."""


def creation(run: Run, s: str | None) -> str:
    if s is None:
        return (
            "These models were created with llmpress from this run recipe:\n\n```yaml\n"
            + run.recipe_text.rstrip()
            + "\n```\n\nby running `llmpress run recipe.yaml --output OUT`; each checkpoint's own card lists its compress recipe."
        )
    return (
        f"This model was created with llmpress from the compress recipe below:\n\n```yaml\n{run.ckpt_recipe[s].rstrip()}\n```\n\n"
        f"```bash\nllmpress compress {run.model} --recipe recipe.yaml --output {run.quant_name(s)}\n```\n\n"
        "(`llmpress run recipe.yaml` reproduces the whole run: compression, evaluation, benchmarks and this card.)"
    )


def evaluation(run: Run, schemes: list[str]) -> str:
    evs = [s for s in schemes if s in run.evals]
    if not evs:
        return "Not evaluated in this run (the recipe has no `eval` section)."
    cfg = run.evals[evs[0]]["config"]
    limits = dict(cfg.get("task_limits") or [])
    limit = ",".join(f"{t}={n}" for t, n in limits.items()) or (str(cfg["limit"]) if cfg.get("limit") else "")
    shots = ",".join(
        ([str(cfg["num_fewshot"])] if cfg.get("num_fewshot") is not None else [])
        + [f"{t}={n}" for t, n in dict(cfg.get("task_fewshot") or []).items()]
    )
    ours = (
        f"llmpress eval {run.repo(evs[0])} --base {run.model} --tasks {','.join(cfg['tasks'])}"
        + (f" --limit {limit}" if limit else "")
        + (f" --num-fewshot {shots}" if shots else "")
        + f" --backend {cfg['backend']} --output eval/{evs[0]}"
    )
    hw = _hardware(run, "eval")
    return (
        f"This run evaluated the model{'s' if len(evs) > 1 else ''} with `llmpress eval` ({cfg['backend']} backend{hw}):\n\n"
        f"```bash\n{ours}\n```\n\n"
        "To evaluate it as the seed cards do (OpenLLM Leaderboard V1 and V2 with vLLM on a GPU), run:\n\n"
        + card_commands(run.repo(evs[0]))
        .removeprefix(CARD_INTRO + "\n\n")
        .replace("\n\nlm_eval", "\n\n```\nlm_eval")
        .replace("--show_config", "--show_config\n```")
    )


def accuracy(run: Run, schemes: list[str]) -> str:
    evs = [s for s in schemes if s in run.evals]
    if not evs:
        return ""
    first = run.evals[evs[0]]
    base_name = run.base_name
    head = ["Category", "Metric", "n", base_name] + [h for s in evs for h in (run.quant_name(s), "Recovery")]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    last = None
    for i, r in enumerate(first["rows"]):
        score = r.get("score", False)
        cells = [
            "" if r["category"] == last else r["category"],
            r["metric"],
            format_n(r),
            format_cell(r["base"], r.get("base_stderr"), score, r["metric"]),
        ]
        last = r["category"]
        for s in evs:
            row = run.evals[s]["rows"][i]
            cells += [format_cell(row["model"], row.get("stderr"), score, row["metric"]), format_recovery(row)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["n: the questions (HumanEval: problems) each row scored, the same for every model.", NOISE_NOTE]
    notes += [DEFAULT_MODEL_NOTE] if run.is_default else []
    return "\n".join(lines) + ("\n\n" + " ".join(notes) if notes else "")


def performance(run: Run, schemes: list[str]) -> str:
    bs = [s for s in schemes if s in run.benches]
    if not bs:
        return "Not benchmarked in this run (the recipe has no `bench` section)."
    parts = []
    for s in bs:
        b = run.benches[s]
        usd = b.get("price_usd_per_hour")
        speed = _speedups(b)
        title = f"### {run.quant_name(s)}\n\n" if len(bs) > 1 else ""
        lead = (
            f"Against the base model this checkpoint runs up to {speed[0]:.2f}x faster single-stream and reaches up to "
            f"{speed[1]:.2f}x the throughput multi-stream"
            if all(speed)
            else ""
        )
        cfg = b["config"]
        parts.append(
            title
            + (lead + ", depending on the profile. " if lead else "")
            + f"Measured with `llmpress bench` against the {cfg['engine']} server{_hardware(run, 'bench')}; "
            f"profiles scaled by {cfg['scale']}; price: {b['price_source']}"
            + (f" (${usd}/hour)" if usd else "")
            + "."
            + "\n"
            + bench_tables(
                b, usd, level=4 if len(bs) > 1 else 3, names={"base": run.base_name, "model": run.quant_name(s)}
            )
        )
    return "\n\n".join(parts)


def _speedups(b: dict) -> tuple[float | None, float | None]:
    models = b["models"]
    if "base" not in models:
        return None, None
    out = []
    for key, better in (("latency_s", lambda m, base: base / m), ("max_qps", lambda m, base: m / base)):
        r = [
            better(m, base)
            for lab in models["model"]["profiles"]
            if (m := models["model"]["profiles"][lab].get(key))
            and (base := models["base"]["profiles"].get(lab, {}).get(key))
        ]
        out.append(max(r) if r else None)
    return tuple(out)


def _hardware(run: Run, stage: str) -> str:
    if run.info.get("hardware_note"):
        return f", {run.info['hardware_note']}"
    hw = next(
        (v.get("hardware") for k, v in sorted(run.ledger.get("stages", {}).items()) if k.startswith(stage + "/")), None
    )
    if not hw:
        return ""
    return f", on {hw['gpu']}" if hw.get("gpu") else f", on a CPU: {hw['cpu']}, {hw['cpu_cores']} cores, no GPU"


# -- the whole card --------------------------------------------------------------------
def render(run: Run, schemes: list[str]) -> str:
    single = schemes[0] if len(schemes) == 1 else None
    title = run.quant_name(single) if single else f"{run.base_name} quantized ({', '.join(schemes)})"
    info = run.info
    opt_lines = "\n".join(
        f"  - **{s}:** weight quantization {_bits(run.quant_config[s])[0]}, activation quantization "
        f"{_bits(run.quant_config[s])[1]}"
        for s in schemes
    )
    base_link = f"[{run.base_name}](https://huggingface.co/{run.base_hub_id})" if run.base_hub_id else run.base_name
    overview = [
        f"- **Model Architecture:** {run.architecture}",
        "- **Input:** Text",
        "- **Output:** Text",
        "- **Model Optimizations:**\n" + opt_lines,
    ]
    if info.get("release_date"):
        overview.append(f"- **Release Date:** {info['release_date']}")
    overview += [
        f"- **Version:** {info.get('version', '1.0')}",
        f"- **Model Developers:** {info.get('developers', 'llmpress user')}",
    ]
    body = [
        f"# {title}",
        "## Model Overview",
        "\n".join(overview),
        f"Quantized version{'s' if not single else ''} of {base_link}."
        + (" " + DEFAULT_MODEL_NOTE if run.is_default else ""),
    ]
    body += ["### Model Optimizations"] + [
        (f"#### {s}\n\n" if not single else "") + optimizations(run, s) for s in schemes
    ]
    body += ["## Use with vLLM"] + [
        (f"#### {s}\n\n" if not single else "") + use_with_vllm(run, s) for s in (schemes if single else schemes[:1])
    ]
    body += ["## Creation", creation(run, single)]
    body += ["## Evaluation", evaluation(run, schemes)]
    if acc := accuracy(run, schemes):
        body += ["### Accuracy", acc]
    body += ["## Inference Performance", performance(run, schemes)]
    fm = yaml.safe_dump(front_matter(run, schemes), sort_keys=False, allow_unicode=True)
    return f"---\n{fm}---\n\n" + "\n\n".join(body) + "\n"


def write_cards(root: str | Path, html: bool = False) -> list[Path]:
    """README.md for the run and for each checkpoint; report.html too with `html`."""
    run = Run.load(root)
    written = []
    for s in run.schemes:
        p = run.root / "models" / s / "README.md"
        _write(p, render(run, [s]))
        written.append(p)
    p = run.root / "README.md"
    _write(p, render(run, run.schemes))
    written.insert(0, p)
    if html:
        from .html import write_html

        written.append(write_html(run, p))
    return written


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
