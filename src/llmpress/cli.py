"""The `llmpress` command line: one verb per stage; flags map onto the stage's config fields."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _compress(a: argparse.Namespace) -> int:
    from .compress import Recipe, compress

    overrides = dict(
        scheme=a.scheme, group_size=a.group_size, num_samples=a.num_samples, max_seq_len=a.max_seq_len,
        dataset=a.dataset, dampening_frac=a.dampening_frac, seed=a.seed, device=a.device,
        observer=a.observer, smoothing_strength=a.smoothing_strength, dtype=a.dtype, gptq=a.gptq,
        rotate=a.rotate, algorithm=a.algorithm, budget=a.budget, float_target=a.float_target,
        mlp_smoothing_strength=a.mlp_smoothing_strength,
    )
    if a.ignore is not None:
        overrides["ignore"] = tuple(x for x in a.ignore.split(",") if x)
    if a.no_actorder:
        overrides["actorder"] = False
    if a.recipe:
        recipe = Recipe.from_yaml(a.recipe, **overrides)
    else:
        recipe = Recipe(**{k: v for k, v in overrides.items() if v is not None})
        recipe.check_applies([k for k, v in overrides.items() if v is not None])
    out = compress(a.model, recipe, a.output, overwrite=a.overwrite)
    stats = json.loads((out / "llmpress_compress.json").read_text())
    print(f"wrote {out} ({stats['scheme']}, {stats['wall_s']} s, peak RSS {stats['peak_rss_mb']} MB, "
          f"{stats['source_bytes'] / 1e6:.1f} MB -> {stats['output_bytes'] / 1e6:.1f} MB)")
    return 0


def _ppl(a: argparse.Namespace) -> int:
    from .eval.perplexity import TextError, perplexity
    from .models import resolve_model

    if a.window < 2:  # each window predicts its tokens after the first
        raise TextError(f"--window {a.window}: must be at least 2 tokens, e.g. --window 512")
    if a.max_tokens < 0:
        raise TextError(f"--max-tokens {a.max_tokens}: must be >= 0 (0 = the whole text)")
    model = resolve_model(a.model)
    base = resolve_model(a.base) if a.base else None
    r = perplexity(model, base, a.text, window=a.window, max_tokens=a.max_tokens or None)
    print(f"perplexity {r.perplexity:.3f} over {r.tokens} tokens of {r.text}")
    if base is not None:
        print(f"base perplexity {r.base_perplexity:.3f}; KL divergence {r.kl_divergence:.4f} nats/token; "
              f"top-1 agreement {100 * r.top1_agreement:.2f}%")
    print(json.dumps(r.to_dict()))
    return 0


def _check(a: argparse.Namespace) -> int:
    from .check import CheckConfig, check

    r = check(CheckConfig(a.checkpoint, base=a.base, tokens=a.tokens, max_kl=a.max_kl, min_top1=a.min_top1))
    print(r.to_markdown())
    print(json.dumps(r.to_dict()))
    if not r.passed:
        print(f"llmpress check: {r.summary()}", file=sys.stderr)
    return 0 if r.passed else 1


def _engine_args(p: argparse.ArgumentParser, model_optional: bool = True) -> None:
    # generate's MODEL is required: with it optional, `generate default` took "default" as the prompt
    p.add_argument("model", nargs="?" if model_optional else None, default="default" if model_optional else None,
                   help="HF folder (dense or compressed-tensors), hub id (online), or 'default'")
    _shared_engine_args(p)
    p.add_argument("--device", default="cpu", help="cpu | cuda")


def _shared_engine_args(p: argparse.ArgumentParser) -> None:
    """The engine's settings that generate / chat and serve share."""
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU) | float32 | bfloat16")
    p.add_argument("--prefill-dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="CPU: activations' "
                   "dtype in prefill GEMMs (auto: --dtype's; bfloat16: 2-3x faster where the CPU has AVX512-BF16)")
    p.add_argument("--max-model-len", type=int, help="context length (default: the config's max_position_embeddings, "
                   "capped by the KV cache)")
    p.add_argument("--max-num-seqs", type=int, default=32, help="sequences decoded together")
    p.add_argument("--kv-cache-memory-bytes", type=int, help="KV cache budget (default: min(2 GiB, 1/4 of free RAM))")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    # None: the model's generation_config.json value, else vLLM's default (as vLLM's --generation-config auto)
    model_default = "(default: the model's generation_config.json, else %s)"
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate per reply (default: %(default)s)")
    p.add_argument("--temperature", type=float, help="0 = greedy " + model_default % "1.0")
    p.add_argument("--top-p", type=float, help=model_default % "1.0")
    p.add_argument("--top-k", type=int, help="0 = off " + model_default % "0")
    p.add_argument("--min-p", type=float, help=model_default % "0.0")
    p.add_argument("--repetition-penalty", type=float, help=model_default % "1.0")
    p.add_argument("--seed", type=int, help="sampling seed, for reproducible samples (default: random)")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def _llm(a: argparse.Namespace):
    from .engine import LLM

    if a.max_num_seqs < 1:
        raise ValueError(f"--max-num-seqs {a.max_num_seqs}: must be at least 1")
    return LLM(a.model, dtype=a.dtype, prefill_dtype=a.prefill_dtype, max_model_len=a.max_model_len, max_num_seqs=a.max_num_seqs,
               kv_cache_memory_bytes=a.kv_cache_memory_bytes, device=a.device)


def _params(a: argparse.Namespace, llm):
    from .engine import SamplingParams
    from .engine.sampling import generation_defaults

    given = dict(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, min_p=a.min_p, repetition_penalty=a.repetition_penalty)
    fields = {**generation_defaults(llm.engine.path), "max_tokens": a.max_tokens, "seed": a.seed, "stop": a.stop}
    return SamplingParams(**{**fields, **{k: v for k, v in given.items() if v is not None}})


def _generate(a: argparse.Namespace) -> int:
    llm = _llm(a)
    out = llm.generate(a.prompt, _params(a, llm), use_tqdm=False)[0].outputs[0]
    print(out.text)
    return 0


def _chat(a: argparse.Namespace) -> int:
    from .chat import chat_loop

    llm = _llm(a)
    return chat_loop(llm, _params(a, llm), a.system)


def _serve(a: argparse.Namespace) -> int:
    from .serve import ServeOptions, run

    opts = ServeOptions(**{k: v for k, v in vars(a).items() if k in ServeOptions.__dataclass_fields__})
    try:
        if opts.max_num_seqs < 1:
            raise ValueError(f"--max-num-seqs {opts.max_num_seqs}: must be at least 1")
        if not 0 < opts.port < 65536:
            raise ValueError(f"--port {opts.port}: must be 1..65535")
        return run(opts)
    except (ValueError, TypeError) as e:  # engine config errors (dtype, max_model_len vs the KV budget, ...)
        print(f"llmpress serve: error: {e}", file=sys.stderr)
        return 2


def _eval(a: argparse.Namespace) -> int:
    from .eval.run import EvalConfig, EvalError, evaluate

    if a.api_key:  # where lm-eval's local-completions reads it; kept out of EvalConfig so eval.json never holds it
        os.environ["OPENAI_API_KEY"] = a.api_key
    cfg = EvalConfig(model=a.model, base=a.base, tasks=a.tasks, limit=a.limit, num_fewshot=a.num_fewshot,
                     backend=a.backend, base_url=a.base_url, base_base_url=a.base_base_url, apply_chat_template=a.apply_chat_template,
                     fewshot_as_multiturn=a.fewshot_as_multiturn, batch_size=a.batch_size, seed=a.seed,
                     humaneval_samples=a.humaneval_samples, ppl_tokens=a.ppl_tokens, max_model_len=a.max_model_len)
    if a.print_commands:
        from .eval.commands import card_commands, offline_equivalent
        from .eval.run import task_folder

        from .models import is_default, resolve_model

        shown = str(resolve_model(a.model)) if is_default(a.model) or Path(a.model).is_dir() else a.model
        print(card_commands(shown))
        ours = [{"mmlu": "llmpress_mmlu", "gsm": "llmpress_gsm", "bbh": "llmpress_bbh"}[t] for t in cfg.tasks if t in ("mmlu", "gsm", "bbh")]
        if ours:
            print("\nThis run's lm-eval tasks, offline (HumanEval and perplexity/KL are scored by llmpress):\n")
            print(offline_equivalent(shown, ours, str(task_folder(cfg)), cfg.limit, cfg.apply_chat_template))
        return 0
    if not a.output:
        raise EvalError("--output DIR is required (eval.json and eval.md are written there)")
    res = evaluate(cfg, a.output, overwrite=a.overwrite)
    print((Path(a.output) / "eval.md").read_text())
    print(json.dumps({"output": str(Path(a.output).resolve()), "rows": res.rows, "wall_s": res.timing_s.get("total")}, default=str))
    return 0


def _bench(a: argparse.Namespace) -> int:
    from .bench.run import BenchConfig, run
    from .bench.workload import WorkloadError

    fields = BenchConfig.__dataclass_fields__
    cfg = BenchConfig(**{k: v for k, v in vars(a).items() if k in fields and v is not None})
    if not a.output:
        raise WorkloadError("--output DIR is required (bench.json and bench.md are written there)")
    out = run(cfg, a.output, overwrite=a.overwrite)
    print((Path(a.output) / "bench.md").read_text())
    print(json.dumps({"output": str(Path(a.output).resolve()), "price_usd_per_hour": out["price_usd_per_hour"],
                      "headline": {s: {k: {h: v.get(h) for h in ("latency_s", "max_qps", "errors")} for k, v in m["profiles"].items()}
                                   for s, m in out["models"].items()}}))
    return 0


def _run(a: argparse.Namespace) -> int:
    from .run import load, run

    recipe = load(a.recipe)  # every mistake surfaces here, before any work
    output = a.output or recipe.output
    if not output:
        from .run import RunError

        raise RunError(f"give --output DIR (or `output:` in {a.recipe})")
    out = run(recipe, output, overwrite=a.overwrite, report=a.report)
    print(f"card: {out / 'README.md'}" + (f"; report: {out / 'report.html'}" if a.report else ""))
    return 0


def _card(a: argparse.Namespace) -> int:
    from .card import write_cards

    for p in write_cards(a.dir, html=a.report):
        print(f"wrote {p}")
    return 0


def _synth(a: argparse.Namespace) -> int:
    from .synth import synth

    out = synth(a.config, a.output, layers=a.layers, seed=a.seed, dtype=a.dtype, overwrite=a.overwrite)
    stats = json.loads((out / "llmpress_synth.json").read_text())
    print(f"wrote {out} ({stats['tensors']} tensors, {stats['bytes'] / 1e9:.2f} GB, {stats['wall_s']} s)")
    return 0


def _plan(a: argparse.Namespace) -> int:
    from . import plan

    recipe = None
    if not a.engine:
        from .compress import Recipe

        fields = dict(scheme=a.scheme, group_size=a.group_size, num_samples=a.num_samples, max_seq_len=a.max_seq_len,
                      dataset=a.dataset, smoothing_strength=a.smoothing_strength, dtype=a.dtype, gptq=a.gptq,
                      algorithm=a.algorithm, float_target=a.float_target, rotate=a.rotate,
                      mlp_smoothing_strength=a.mlp_smoothing_strength)
        fields = {k: v for k, v in fields.items() if v is not None}
        recipe = Recipe.from_yaml(a.recipe, **fields) if a.recipe else Recipe(**fields)
    engine = None if recipe else (a.kv_cache_memory_bytes, a.max_num_batched_tokens, a.max_num_seqs)
    print("\n".join(plan.report(a.model, a.output or ".", a.gpu, recipe, engine)))
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the text already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmpress")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmpress", description="Compress, run, evaluate and benchmark LLMs on your own machine.",
                                formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"llmpress {_version()}")
    sub = p.add_subparsers(dest="verb", required=True)

    c = sub.add_parser("compress", help="one-shot quantization into a compressed-tensors checkpoint")
    c.add_argument("model", nargs="?", default="default", help="HF folder, hub id (online), or 'default' (SmolLM2-135M-Instruct)")
    c.add_argument("--scheme", help="W4A16 | W4A16_ASYM | W8A16 | W8A8 | FP8_DYNAMIC")
    c.add_argument("--group-size", type=int, help="weights per scale for group-wise schemes (default: the scheme's, 128)")
    c.add_argument("--num-samples", type=int, help="calibration samples (default: 128)")
    c.add_argument("--max-seq-len", type=int, help="tokens per calibration sample (default: 512)")
    c.add_argument("--dataset", help="'sharegpt' (default), a .json/.jsonl file, or hub:NAME[:split]")
    c.add_argument("--dampening-frac", type=float, help="GPTQ dampening, a fraction of mean(diag H) (default: 0.1)")
    c.add_argument("--observer", choices=["mse", "minmax"], help="weight range search (default: mse for int, minmax for fp8 and --algorithm awq)")
    c.add_argument("--smoothing-strength", type=float, help="SmoothQuant alpha for W8A8 (0 = off)")
    c.add_argument("--mlp-smoothing-strength", type=float,
                   help="SmoothQuant alpha for up_proj -> down_proj, Llama-family layers, W8A8 (default: searched "
                        "per layer; 0 = off)")
    c.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ error compensation (default: on for int schemes, off for FP8_DYNAMIC)")
    c.add_argument("--algorithm", choices=["gptq", "rtn", "awq", "awq+gptq"],
                   help="gptq (GPTQ error compensation), rtn (round-to-nearest, as --no-gptq), awq (AWQ activation-aware "
                        "scales folded into the previous norm/Linear, then round-to-nearest), awq+gptq (AWQ scales, then "
                        "GPTQ); weight-only schemes for awq (default: gptq for int schemes, rtn for FP8_DYNAMIC)")
    c.add_argument("--budget", type=float, metavar="BITS",
                   help="mixed precision: average bits per weight (scales included) over the target Linears, which "
                        "each get W4 (the scheme's group g, or g/2), W8 or stay unquantized by measured sensitivity, q/k/v and gate/up "
                        "together; `ignore`d modules (lm_head) are outside the budget. W4A16 only (W4A16_ASYM: see the README), "
                        "from the scheme's own cost (4.125 at group 128) up to 16")
    c.add_argument("--rotate", action="store_true", default=None,
                   help="fuse QuaRot/SpinQuant Hadamard rotations (R1 residual, R2 per head) into the weights first")
    c.add_argument("--float-target", action="store_true", default=None,
                   help="GPTQ matches each Linear's output to the float model's (on the float model's inputs), so it "
                        "corrects the error of the layers before it (GPTAQ); Llama-family layers, GPTQ schemes")
    c.add_argument("--no-actorder", action="store_true", help="quantize columns in order, with error-compensated group scales")
    c.add_argument("--ignore", help="comma-separated module names / re: patterns left unquantized")
    c.add_argument("--seed", type=int, help="calibration sample draw (default: 42)")
    c.add_argument("--device", help="auto | cpu | cuda")
    c.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="calibration forward dtype (auto: measured)")
    c.add_argument("--recipe", help="YAML file of recipe fields (flags override it)")
    c.add_argument("--output", required=True, metavar="DIR", help="the checkpoint folder to write (required)")
    c.add_argument("--overwrite", action="store_true", help="replace DIR if llmpress wrote it (never a folder it did not write)")
    c.set_defaults(fn=_compress)

    q = sub.add_parser("ppl", help="perplexity on held text; KL divergence and top-1 agreement with --base")
    q.add_argument("model", nargs="?", default="default", help="HF folder, hub id (online), or 'default'")
    q.add_argument("--base", help="a base model: adds KL divergence and top-1 agreement against it")
    q.add_argument("--text", help="a text file (default: the Lee corpus from gensim's test data)")
    q.add_argument("--window", type=int, default=512, help="tokens per non-overlapping window")
    q.add_argument("--max-tokens", type=int, default=16384, help="0 = the whole text")
    q.set_defaults(fn=_ppl)

    k = sub.add_parser("check", help="quality gate: scales, groups, calibration, config; KL / top-1 with --base")
    k.add_argument("checkpoint", help="a compressed-tensors checkpoint folder")
    k.add_argument("--base", help="the model it was compressed from: adds KL / top-1 agreement against limits")
    k.add_argument("--tokens", type=int, default=512, help="held-text tokens scored against --base")
    k.add_argument("--max-kl", type=float, help="KL limit, nats/token (default: 0.8 for 4-bit weights, 0.15 for 8-bit)")
    k.add_argument("--min-top1", type=float, help="top-1 agreement limit, a fraction (default: 0.55 4-bit, 0.75 8-bit)")
    k.set_defaults(fn=_check)

    g = sub.add_parser("generate", help="complete a prompt with the embedded engine")
    _engine_args(g, model_optional=False)
    g.add_argument("prompt", help="the text to complete")
    _sampling_args(g)
    g.set_defaults(fn=_generate)

    h = sub.add_parser("chat", help="interactive chat with the embedded engine (the model's chat template)")
    _engine_args(h)
    h.add_argument("--system", help="system prompt")
    _sampling_args(h)
    h.set_defaults(fn=_chat)

    v = sub.add_parser("serve", help="OpenAI-compatible HTTP server on the embedded engine (or exec vLLM's)")
    v.add_argument("model", nargs="?", default="default", help="HF folder (dense or compressed-tensors), hub id (online), or 'default'")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    v.add_argument("--port", type=int, default=8000, help="TCP port")
    v.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 routes")
    _shared_engine_args(v)
    v.add_argument("--engine", choices=["embedded", "vllm"], default="embedded", help="vllm: exec vLLM's server with these flags")
    v.add_argument("--served-model-name", help="model id clients use (default: the model folder's name)")
    v.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond --max-num-seqs before new ones get 503")
    vl = v.add_argument_group("vLLM's flags", "passed to vLLM unchanged with --engine vllm; the embedded engine "
                                              "honours those that apply and refuses the rest, saying why")
    vl.add_argument("--tensor-parallel-size", type=int, help="GPUs per model (embedded: 1)")
    vl.add_argument("--gpu-memory-utilization", type=float, help="vLLM's KV cache share of GPU memory (embedded: use "
                                                                 "--kv-cache-memory-bytes)")
    vl.add_argument("--chat-template", help="a Jinja file (or the template text) replacing the model's chat template")
    vl.add_argument("--seed", type=int, help="engine seed for requests without their own")
    vl.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, help="(embedded: not available)")
    vl.add_argument("--trust-remote-code", action="store_true", help="run the model's own code from the hub "
                                                                    "(vLLM only; off by default)")
    vl.add_argument("--quantization", help="vLLM's quantization method (embedded: compressed-tensors, from config.json)")
    vl.add_argument("--max-num-batched-tokens", type=int, help="tokens per engine step (chunked prefill)")
    v.set_defaults(fn=_serve)

    e = sub.add_parser("eval", help="accuracy and recovery against a base: lm-eval tasks, HumanEval, perplexity / KL")
    e.add_argument("model", nargs="?", default="default", help="HF folder, hub id (online), 'default', or the served id (--backend openai)")
    e.add_argument("--base", help="the base model to compute recovery against")
    e.add_argument("--tasks", default="mmlu,gsm,bbh,humaneval,ppl",
                   help="comma list of mmlu,gsm,bbh,humaneval,ppl (offline) or any lm-eval task/group name (online)")
    e.add_argument("--limit", help="documents per task (BBH: per subtask; HumanEval: problems): N, or TASK=N,... e.g. mmlu=500,gsm=50")
    e.add_argument("--num-fewshot", help="K or TASK=K,... (default: each task's own: MMLU 5, GSM 5, BBH 3)")
    e.add_argument("--backend", choices=["embedded", "vllm", "openai"], default="embedded",
                   help="what runs the model: the embedded engine, vLLM, or a server (--base-url)")
    e.add_argument("--base-url", help="openai backend: MODEL's endpoint, e.g. http://127.0.0.1:8000/v1")
    e.add_argument("--base-base-url", help="openai backend: BASE's endpoint")
    e.add_argument("--api-key", help="openai backend: the servers' API key (default: $OPENAI_API_KEY)")
    e.add_argument("--apply-chat-template", action="store_true", help="wrap prompts in the model's chat template (lm-eval's flag)")
    e.add_argument("--fewshot-as-multiturn", action="store_true", help="few-shot examples as chat turns (needs --apply-chat-template)")
    e.add_argument("--batch-size", type=int, default=16, help="sequences in flight")
    e.add_argument("--seed", type=int, default=1234, help="few-shot draw and sampling seed")
    e.add_argument("--humaneval-samples", type=int, default=10, help="samples per problem for pass@10 (0: pass@1 only)")
    e.add_argument("--ppl-tokens", type=int, default=16384, help="held-text tokens for perplexity / KL")
    e.add_argument("--max-model-len", type=int, help="context length of the embedded / vLLM engine (default: the model's)")
    e.add_argument("--print-commands", action="store_true", help="print the cards' lm_eval commands for MODEL and exit")
    e.add_argument("--output", metavar="DIR", help="folder for eval.json and eval.md (required unless --print-commands)")
    e.add_argument("--overwrite", action="store_true", help="replace DIR if llmpress wrote it")
    e.set_defaults(fn=_eval)

    b = sub.add_parser("bench", help="the cards' performance tables: latency, max QPS and QPD per use-case profile")
    b.add_argument("--target", help="a running OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    b.add_argument("--launch", metavar="MODEL", help="serve MODEL on a free port for the run (embedded engine unless --engine vllm)")
    b.add_argument("--base", help="base model to launch and benchmark the same way (cost-reduction column)")
    b.add_argument("--base-target", help="... or the base model's running server")
    b.add_argument("--engine", choices=["embedded", "vllm"], default="embedded", help="server for --launch")
    b.add_argument("--profiles", help="e.g. 256/128,512/256 (default: the cards' eight)")
    b.add_argument("--scale", type=float, help="multiply the profiles' token counts (e.g. 0.25 on a CPU)")
    b.add_argument("--mode", choices=["synchronous", "concurrent", "constant", "poisson", "throughput", "sweep"],
                   help="load pattern, as in GuideLLM (default: sweep)")
    b.add_argument("--concurrency", type=int, help="concurrent mode, and the saturation level (default 16)")
    b.add_argument("--rate", type=float, help="req/s for constant / poisson")
    b.add_argument("--sweep-points", type=int, help="load settings between synchronous and throughput in sweep mode")
    b.add_argument("--max-seconds", type=float, help="per load setting (default 60)")
    b.add_argument("--max-requests", type=int, help="per load setting")
    b.add_argument("--sync-requests", type=int, help="single-stream requests per profile (default 5)")
    b.add_argument("--gpu", choices=["A6000", "A100", "H100"], help="price from the cards' tables")
    b.add_argument("--cost-per-hour", type=float, help="$/hour of the machine")
    b.add_argument("--max-model-len", type=int, help="skip profiles longer than this")
    b.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="the launched servers' --dtype")
    b.add_argument("--prefill-dtype", choices=["auto", "float32", "bfloat16"],
                   help="the launched embedded servers' --prefill-dtype (bfloat16: faster CPU prefill)")
    b.add_argument("--api-key", help="the target servers' API key")
    b.add_argument("--output", required=True, metavar="DIR", help="folder for bench.json and bench.md (required)")
    b.add_argument("--overwrite", action="store_true", help="replace DIR if llmpress wrote it")
    b.set_defaults(fn=_bench)

    r = sub.add_parser("run", help="every stage of a run recipe (compress, eval, bench, card); resumes where it stopped")
    r.add_argument("recipe", help="run recipe YAML (see recipes/)")
    r.add_argument("--output", help="the run folder (default: the recipe's `output:`)")
    r.add_argument("--report", action="store_true", help="also render the card to report.html with the plots inline")
    r.add_argument("--overwrite", action="store_true", help="discard the folder's finished stages and start over")
    r.set_defaults(fn=_run)

    d = sub.add_parser("card", help="write DIR/README.md (and each checkpoint's) from a run folder's results")
    d.add_argument("dir", help="an `llmpress run` output folder")
    d.add_argument("--report", action="store_true", help="also write report.html")
    d.set_defaults(fn=_card)

    y = sub.add_parser("synth", help="a random-weight checkpoint of a Llama-family config (any shape), "
                       "with a full-vocabulary tokenizer")
    y.add_argument("config", help="a config.json (or a folder with one), a built-in name "
                   "(deepseek-r1-distill-llama-8b), or a hub id (online)")
    y.add_argument("--output", required=True, help="the checkpoint folder to write (required)")
    y.add_argument("--layers", type=int, help="keep every shape but write only the first N decoder layers")
    y.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same weights")
    y.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: the config's torch_dtype, else bfloat16")
    y.add_argument("--overwrite", action="store_true", help="replace an output folder that llmpress wrote")
    y.set_defaults(fn=_synth)

    n = sub.add_parser("plan", help="predict peak RAM, disk and wall time of compress (or the engine's memory) "
                       "before any work")
    n.add_argument("model", nargs="?", default="default",
                   help="HF folder, 'default', or a config (synth built-in name or config.json)")
    n.add_argument("--engine", action="store_true", help="plan LLM(...) / serve instead of compress")
    n.add_argument("--scheme", help="W4A16 | W4A16_ASYM | W8A16 | W8A8 | FP8_DYNAMIC")
    n.add_argument("--group-size", type=int, help="int4 group size (default: the scheme's)")
    n.add_argument("--num-samples", type=int, help="calibration samples (default: compress's)")
    n.add_argument("--max-seq-len", type=int, help="tokens per calibration sample (default: compress's)")
    n.add_argument("--dataset", help="calibration data, as for compress")
    n.add_argument("--smoothing-strength", type=float, help="SmoothQuant alpha (W8A8), as for compress")
    n.add_argument("--mlp-smoothing-strength", type=float, help="SmoothQuant alpha for up -> down, as for compress")
    n.add_argument("--float-target", action="store_true", default=None, help="as for compress")
    n.add_argument("--rotate", action="store_true", default=None, help="as for compress")
    n.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=None,
                   help="plan GPTQ (or round-to-nearest with --no-gptq); default: the scheme's")
    n.add_argument("--algorithm", choices=["gptq", "rtn", "awq", "awq+gptq"], help="as for compress")
    n.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="calibration forward dtype")
    n.add_argument("--recipe", help="YAML file of recipe fields (flags override it)")
    n.add_argument("--output", help="where the checkpoint would go (for the free-disk check)")
    n.add_argument("--gpu", help="plan for a named GPU instead of this CPU: H100 | H200 | A100")
    n.add_argument("--max-num-seqs", type=int, default=32, help="with --engine: concurrent sequences")
    n.add_argument("--max-num-batched-tokens", type=int, default=512, help="with --engine: tokens per step")
    n.add_argument("--kv-cache-memory-bytes", type=int, help="with --engine: KV cache size (default: the engine's)")
    n.set_defaults(fn=_plan)
    for sp in sub.choices.values():
        sp.formatter_class = _HelpFormatter
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:  # Ctrl-C anywhere, the imports below included: one line and 130 (128 + SIGINT), as shells expect
        return _dispatch(args)
    except KeyboardInterrupt:
        print(f"\nllmpress {args.verb}: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from .errors import LlmpressError

    errors: tuple[type[Exception], ...] = (LlmpressError,)
    if args.verb in ("generate", "chat"):  # the engine validates its input with ValueError / TypeError
        errors += (ValueError, TypeError)
    try:
        return args.fn(args)
    except errors as e:
        print(f"llmpress {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
