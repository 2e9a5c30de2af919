"""compress(): one-shot quantization of a Hugging Face decoder-only model into a
compressed-tensors checkpoint, one decoder layer at a time.

Weights are read per layer from the model's memory-mapped safetensors and
written per layer to output shards, so peak memory is about one layer (in
float32) plus the cached calibration activations. For each layer:
  materialize -> [AWQ: float forward with stat hooks, scale search, fold]
  -> forward all samples with stat hooks -> SmoothQuant fold
  -> GPTQ (or round-to-nearest) each target Linear -> write -> forward again with the quantized
  weights (these outputs feed the next layer) -> free.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint.compressed_tensors import compress_linear, mixed_quantization_config, quantization_config
from ..checkpoint.shards import LazyCheckpoint, ShardWriter, atomic_output_dir, copy_side_files
from .. import plan
from ..layout import DOWN_PROJ, NORM_READERS, O_PROJ, UP_PROJ, V_PROJ, layout_of
from ..models import resolve_model
from ..quant import dequantize, dynamic_per_token
from . import awq, budget, rotate, sequential
from .fisher import budget_fisher
from .awq import fold_into_rows
from .calibrate import CalibrationError, DecoderInputs, InputStats, calibration_dtype, calibration_inputs, run_layer
from .fp8 import fp8_quantize_weight
from .gptq import GPTQResult, asymmetric_target, gptq_quantize, rtn_quantize
from .moe import calibrate_all_experts, unrouted_experts
from .recipe import Recipe, RecipeError
from .skeleton import materialize, meta_model, trim_heap
from .smoothquant import (
    fold_into_norm, fold_into_v, move_hessian, norm_weight_offset, smoothing_scales, vo_smoothing_scales,
)
from .targets import find_decoder_layers, group_size_problems, target_linears


def _log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def compress(
    model: str | Path | None,
    recipe: Recipe,
    output: str | Path,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Quantize `model` (a local HF folder, 'default', or a hub id when online) with
    `recipe` and write a compressed-tensors checkpoint to `output`. Returns `output`."""
    t0 = time.time()
    src = resolve_model(model)
    scheme = recipe.quant_scheme
    config, skeleton = meta_model(src)
    layers_prefix, layers = find_decoder_layers(skeleton, config.num_hidden_layers)
    ckpt = LazyCheckpoint(src)
    if recipe.rotate:
        ckpt = _rotated(ckpt, config, recipe.seed)

    names = list(target_linears(layers[0], f"{layers_prefix}.0", recipe.targets, recipe.ignore))
    if not names:
        raise RecipeError(f"targets {list(recipe.targets)} minus ignore {list(recipe.ignore)} match no Linear in the decoder layers")
    if scheme.weights.strategy == "group":
        bad = group_size_problems(layers[0], names, scheme.weights.group_size)
        if bad:
            raise RecipeError(
                f"group_size {scheme.weights.group_size} does not divide the input features of {', '.join(bad)}; "
                f"use a group_size that divides them (e.g. `group_size: 64` / --group-size 64) or add those layers to `ignore`"
            )
    _check_staged_only(recipe, layers[0], names, config)
    if recipe.float_target and recipe.uses_awq and not recipe.rotate:
        _log("float_target with AWQ and no rotation measured worse than plain GPTQ on the default model (KL 0.235 vs "
             "0.204; AWQ + GPTQ 0.182, float_target alone 0.157); with --rotate it helped (benchmarks/README.md)")
    device = torch.device("cuda" if recipe.device == "auto" and torch.cuda.is_available() else ("cpu" if recipe.device == "auto" else recipe.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"device {recipe.device!r} but no CUDA GPU is visible; use --device cpu (or auto)")
    calib_dtype = calibration_dtype(recipe.dtype, device)
    with atomic_output_dir(output, overwrite) as tmp:  # an output that exists or cannot be written fails first
        plan.check_compress(src, recipe, device.type, calib_dtype.itemsize, output)  # fail now, not OOM-killed halfway
        # Only {"format": "pt"} in the header: safetensors writes metadata from a hash map whose
        # order changes per process, and reruns must give byte-identical files.
        writer = ShardWriter(tmp)
        layer_keys = f"{layers_prefix}."
        for key in ckpt.keys():  # embeddings, final norm, lm_head: unchanged
            if not key.startswith(layer_keys):
                writer.add(key, ckpt.get(key))
        writer.flush()

        inputs = samples = None
        if recipe.calibrated:
            inputs, samples = calibration_inputs(src, skeleton, layers, recipe, ckpt, device, calib_dtype, log=_log)
            if recipe.float_target and scheme.uses_gptq:
                inputs.float_hidden = list(inputs.hidden)  # layer 0: the float model's inputs are the same
        stats = {"layers": []}
        assign, choices = None, None
        if recipe.budget is not None:
            choices = budget.choice_schemes(scheme)
            fisher = budget_fisher(src, config, ckpt.nbytes(), samples, layers_prefix, recipe.seed, progress, _log)
            assign, stats["budget"] = _allocate_budget(layers, layers_prefix, ckpt, inputs, recipe, config, device,
                                                       calib_dtype, choices, progress, fisher)
        said: list[list[str]] = []
        bar = tqdm(range(len(layers)), desc=f"compress {scheme.name}", disable=not progress, unit="layer")
        for i in bar:
            prefix = f"{layers_prefix}.{i}"
            layer = layers[i]
            dtypes = materialize(layer, prefix, ckpt, device, calib_dtype)
            linears = target_linears(layer, prefix, recipe.targets, recipe.ignore)
            layer_inputs = inputs.layer(i) if inputs is not None else None
            schemes = None if assign is None else {n: choices[assign[f"{prefix}.{n}"]] for n in linears}
            float_inputs = inputs.float_layer(i) if inputs is not None else None
            layer_stats, q_tensors, outs, float_outs = _quantize_layer(layer, prefix, linears, layer_inputs, recipe,
                                                                       config, dtypes, schemes, float_inputs)
            for name, p in layer.named_parameters():
                mod_name, _, pname = name.rpartition(".")
                if mod_name in q_tensors and pname == "weight":  # unquantized by --budget: written as it is
                    for suffix, t in q_tensors[mod_name].items():
                        writer.add(f"{prefix}.{mod_name}.{suffix}", t)
                else:
                    writer.add(f"{prefix}.{name}", p.detach().to("cpu", dtypes[name]))
            if inputs is not None and i + 1 < len(layers):
                if outs is None:  # generic path: propagate through the quantized layer
                    hooks = _activation_quant_hooks(linears, scheme) if scheme.input_activations else []
                    outs = run_layer(layer, layer_inputs)
                    for h in hooks:
                        h.remove()
                inputs.hidden = outs
                inputs.float_hidden = float_outs  # None when not float_target
            layer.to("meta")
            trim_heap()
            for name, n in layer_stats.pop("module_tokens", {}).items():  # read by `llmpress check`
                stats.setdefault("calibration_tokens", {})[f"{prefix}.{name}"] = n
            stats["layers"].append(layer_stats)
            if (skipped := layer_stats.get("smoothquant_not_folded")) and skipped not in said:
                said.append(skipped)
                _log(f"{prefix}: SmoothQuant cannot fold exactly into {skipped} (the norm's output is not what "
                     "those Linears read, or it does not scale with its weight); they are quantized unsmoothed")
            if "awq" in layer_stats:
                a = layer_stats["awq"]
                _log(f"{prefix}: AWQ " + ", ".join(f"{k} r={v['ratio']:.2f}{' duo' if v['duo'] else ''}"
                                                  for k, v in a["pairs"].items())
                     + f"; search loss {a['loss']:.4g} vs round-to-nearest {a['rtn_loss']:.4g} ({a['seconds']} s)")
            if layer_stats.get("gptq_loss") is not None:
                bar.set_postfix(loss=f"{layer_stats['gptq_loss']:.3g}")
                _log(f"{prefix}: GPTQ loss {layer_stats['gptq_loss']:.4g} over {len(linears)} Linears"
                     + (f", up -> down SmoothQuant α {a:g}" if (a := layer_stats.get("mlp_smoothing_strength")) is not None
                        else "")
                     + (f", {layer_stats['calibration_tokens']} tokens" if "calibration_tokens" in layer_stats else ""))
        writer.close()

        cfg = json.loads((src / "config.json").read_text())
        if recipe.rotate:
            cfg["tie_word_embeddings"] = False  # the rotated lm_head holds the final norm; the embedding does not
        if assign is None:
            cfg["quantization_config"] = quantization_config(scheme, list(recipe.ignore), list(recipe.targets))
        else:  # one config group per precision, exact module names; the unquantized join `ignore`
            groups = [(sch, [n for n, a in assign.items() if a == c]) for c, sch in choices.items() if sch is not None]
            cfg["quantization_config"] = mixed_quantization_config(
                [(sch, names) for sch, names in groups if names],
                list(recipe.ignore) + [n for n, a in assign.items() if a == "16"])
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        copy_side_files(src, tmp)
        (tmp / "recipe.yaml").write_text(recipe.to_yaml())
        stats.update(
            scheme=scheme.name,
            source=str(src),
            wall_s=round(time.time() - t0, 2),
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            source_bytes=ckpt.nbytes(),
            output_bytes=sum(p.stat().st_size for p in tmp.glob("*.safetensors")),
            device=str(device),
            calibration_dtype=str(calib_dtype).removeprefix("torch."),
        )
        (tmp / "llmpress_compress.json").write_text(json.dumps(stats, indent=2) + "\n")
        _gate(tmp, src, stats["source_bytes"], output)
    return Path(output)


def _gate(tmp: Path, src: Path, source_bytes: int, output) -> None:
    """`llmpress check` on the checkpoint before it is renamed into place (check/), with the source as
    the base when both fit in RAM in float32 (transformers loads each; ~4x the bf16 bytes). A failing
    checkpoint goes to OUTPUT.failed/ with the reason, and the run stops with one line."""
    from ..check import CheckConfig, CheckFailed, check, set_aside, write_report
    from ..corpus import TextError, lee_corpus_path

    base, why = src, ""
    try:
        if not lee_corpus_path().is_file():
            base, why = None, "the Lee corpus (gensim's test data) is not installed"
    except TextError as e:
        base, why = None, str(e)
    if base is not None and 4 * source_bytes > plan.this_machine(output, measure=False).ram_available:
        base, why = None, f"the base and the checkpoint in float32 (~{4 * source_bytes / 1e9:.1f} GB) exceed free RAM"
    report = check(CheckConfig(str(tmp), base=str(base) if base else None))
    report.checkpoint = str(Path(output).expanduser().resolve())  # where it goes, not the temporary folder
    if why:
        report.notes.append(f"KL vs the base not measured: {why}; run `llmpress check DIR --base MODEL` elsewhere")
        _log(f"check: KL vs the base not measured: {why}")
    if not report.passed:
        failed = set_aside(tmp, output, report)
        raise CheckFailed(f"{report.summary()}; the checkpoint is kept at {failed} (reason in "
                          f"{failed / 'CHECK_FAILED.txt'}), not at {output}")
    write_report(report, tmp)
    _log(report.summary())


def _check_staged_only(recipe: Recipe, layer0: nn.Module, names: list[str], config) -> None:
    """float_target and up -> down SmoothQuant live on the staged path (sequential.py), which reproduces
    Llama-family layers exactly: refuse the one, say so for the other, before any work."""
    staged = recipe.sequential and sequential.supports(layer0, dict.fromkeys(names), config, recipe.max_seq_len)
    if staged:
        return
    why = ("sequential: false" if not recipe.sequential else
           f"{type(layer0).__name__} layers with Linears {', '.join(names)} are not the Llama-family shape it runs")
    if recipe.float_target and recipe.quant_scheme.uses_gptq:
        raise RecipeError(f"float_target needs the staged true-sequential path, and here {why}; drop float_target "
                          "(--float-target)")
    act = recipe.quant_scheme.input_activations
    if act is not None and act.type == "int" and recipe.mlp_smoothing_strength != 0:
        _log(f"up_proj -> down_proj SmoothQuant (mlp_smoothing_strength {recipe.mlp_smoothing_strength}) runs on "
             f"the staged path only, and here {why}: down_proj is quantized unsmoothed")


def _rotated(ckpt: LazyCheckpoint, config, seed: int) -> rotate.RotatedCheckpoint:
    """The checkpoint seen through R1 + R2 Hadamard rotations (rotate.py), refused where they do not apply."""
    if config.model_type not in rotate.SUPPORTED:
        raise RecipeError(f"rotate: {config.model_type} is not supported (Llama, Mistral, Qwen2 layouts only); "
                          "drop `rotate` / --rotate")
    d, heads = config.hidden_size, config.num_attention_heads
    for n, what in ((d, "hidden_size"), (getattr(config, "head_dim", None) or d // heads, "head_dim")):
        if rotate.hadamard(n) is None:
            raise RecipeError(f"rotate: no Hadamard matrix of order {n} ({what}) is built here; drop --rotate")
    view = rotate.RotatedCheckpoint(ckpt, config, seed)
    if view.tied:
        _log("rotate: lm_head is untied from the embedding (it absorbs the final norm's scale, the embedding "
             "does not), so the output stores both")
    return view


def _quantize_layer(
    layer: nn.Module, prefix: str, linears: dict[str, nn.Linear], inputs, recipe: Recipe, config, dtypes,
    schemes: dict | None = None, float_inputs=None,
):
    """SmoothQuant + GPTQ (or round-to-nearest) for one materialized layer. Each target's
    weight is replaced by its dequantized value. `schemes` (--budget) gives each Linear its own
    scheme, None leaving it unquantized (not in the returned tensors). `float_inputs`: the float
    model's inputs to this layer (recipe float_target, staged path). Returns (stats, tensors to
    save, the layer's outputs if the staged path already computed them, else None, the float
    layer's outputs when float_inputs were given, else None)."""
    scheme = recipe.quant_scheme
    smooth = scheme.input_activations is not None and scheme.input_activations.type == "int" and recipe.smoothing_strength > 0
    out: dict[str, dict[str, torch.Tensor]] = {}
    losses: list[float] = []

    def quantize(names, H, D=None):
        for name in names:
            scheme = recipe.quant_scheme if schemes is None else schemes[name]
            if scheme is None:
                continue
            lin = linears[name]
            W = lin.weight.data
            scale_dtype = dtypes[f"{name}.weight"]  # scales are stored in the model's own dtype
            if H is None and scheme.weights.type == "float":
                q, scale = fp8_quantize_weight(W, scale_dtype)
                res = GPTQResult(q, scale, None, float("nan"), 0.0)
            elif H is None:  # after AWQ, its clip: the range search scored on the output through the Hessian
                res = rtn_quantize(W, scheme.weights, scale_dtype, clip.get(name))
            else:
                if not H.diagonal().any():  # every input exactly zero: GPTQ would report loss 0 and learn nothing
                    raise CalibrationError(
                        f"{prefix}.{name}: every calibration input it received is zero (lost embeddings or a broken "
                        "forward), so GPTQ has no data; quantize without data with --no-gptq (round-to-nearest)"
                    )
                if D is not None:  # float_target: aim at the float model's output (gptq.asymmetric_target)
                    W = asymmetric_target(W, H, D, recipe.dampening_frac)
                res = gptq_quantize(W, H, scheme.weights, recipe.dampening_frac, scale_dtype, warn=_log)
                losses.append(res.loss)
            zp = None if res.zero_point is None else res.zero_point.cpu()
            out[name] = compress_linear(res.q.cpu(), res.scale.cpu(), zp, scheme)
            lin.weight.data = dequantize(res.q, res.scale, res.zero_point).to(W.dtype)

    outs, skipped, tokens, float_outs, chosen = None, [], None, None, {}
    awq_stats, clip = (_awq_layer(layer, linears, inputs, scheme.weights, config, scheme.uses_gptq)
                       if recipe.uses_awq else (None, {}))
    if not scheme.uses_gptq:
        quantize(list(linears), None)
    elif recipe.sequential and sequential.supports(layer, linears, config, recipe.max_seq_len):
        reference = None
        if float_inputs is not None:  # before any weight of the layer changes (after AWQ's exact folds)
            reference, float_outs = sequential.float_stages(layer, float_inputs)
        outs = sequential.staged_quantize(layer, linears, inputs, recipe, config, smooth, quantize, reference, chosen)
    else:
        stats = _collect_stats(layer, prefix, linears, inputs, smooth)
        hessians = {o: stats.hessians[o].hessian() for o in set(stats.owner.values())}
        if smooth:
            skipped = _smooth_layer(layer, linears, stats, hessians, recipe.smoothing_strength, config)
        for name in linears:
            quantize([name], hessians[stats.owner[name]])
        tokens = stats.tokens
    layer_stats = {"gptq_loss": float(sum(losses))} if losses else {}
    layer_stats.update(chosen)
    if awq_stats is not None:
        layer_stats["awq"] = awq_stats
    if skipped:
        layer_stats["smoothquant_not_folded"] = skipped
    if inputs is not None:
        layer_stats["calibration_tokens"] = sum(h.numel() // h.shape[-1] for h, _ in inputs)
        # per Linear: the hooks' counts, or on the staged path every token of the layer's input
        layer_stats["module_tokens"] = tokens or dict.fromkeys(linears, layer_stats["calibration_tokens"])
    return layer_stats, out, outs, float_outs


def _allocate_budget(layers, layers_prefix, ckpt, inputs: DecoderInputs, recipe: Recipe, config, device, calib_dtype,
                     choices: dict, progress: bool, fisher: dict[str, float] | None) -> tuple[dict[str, str], dict]:
    """--budget: one extra float pass over the layers (budget.py) that measures each unit's output error
    tr(ΔW H ΔWᵀ) at each quantized choice, quantized as the run will (GPTQ, or round-to-nearest), on the float
    model's calibration inputs; then the greedy allocation. Units are the Linears that share an input
    (q/k/v, gate/up: fused by the engine and vLLM, so one precision each). Returns ({module name: choice},
    the summary for llmpress_compress.json). The calibration inputs are restored for the real pass."""
    t0 = time.time()
    first = inputs.hidden
    units: list[budget.Unit] = []
    bar = tqdm(range(len(layers)), desc="budget: sensitivity", disable=not progress, unit="layer")
    for i in bar:
        prefix = f"{layers_prefix}.{i}"
        layer = layers[i]
        dtypes = materialize(layer, prefix, ckpt, device, calib_dtype)
        linears = target_linears(layer, prefix, recipe.targets, recipe.ignore)
        layer_inputs = inputs.layer(i)
        st = _collect_stats(layer, prefix, linears, layer_inputs, smooth=False)
        by_owner: dict[str, list[str]] = {}
        for name in linears:
            by_owner.setdefault(st.owner[name], []).append(name)
        for owner, names in by_owner.items():
            H = st.hessians[owner].hessian()
            u = budget.Unit(tuple(f"{prefix}.{n}" for n in names), 0, {}, {})
            for name in names:
                W = linears[name].weight.data.float()
                rows, cols = W.shape
                u.numel += rows * cols
                dense_bits = 8 * dtypes[f"{name}.weight"].itemsize
                for key, sch in choices.items():
                    args = None if sch is None else sch.weights
                    u.bits[key] = u.bits.get(key, 0.0) + rows * cols * budget.bits_per_weight(args, cols, dense_bits)
                    if sch is None:
                        u.error[key] = 0.0
                        continue
                    scale_dtype = dtypes[f"{name}.weight"]
                    res = (gptq_quantize(W, H, sch.weights, recipe.dampening_frac, scale_dtype, warn=_log)
                           if sch.uses_gptq else rtn_quantize(W, sch.weights, scale_dtype))
                    err = budget.output_error(W, dequantize(res.q, res.scale, res.zero_point), H)
                    u.error[key] = u.error.get(key, 0.0) + err
            u.bits = {k: v / u.numel for k, v in u.bits.items()}
            units.append(u)
            del H
        if i + 1 < len(layers):
            inputs.hidden = run_layer(layer, layer_inputs)
        layer.to("meta")
        trim_heap()
    inputs.hidden = first
    weighted = fisher is not None and budget.weight_by_fisher(units, fisher)
    pick = budget.allocate(units, recipe.budget)
    summary = budget.summary(units, pick)
    summary["sensitivity"] = "local output error x output Fisher" if weighted else "local output error"
    summary["seconds"] = round(time.time() - t0, 2)
    shares = ", ".join(f"{c} {100 * v['weight_share']:.1f}% ({v['units']} units)" for c, v in summary["choices"].items())
    _log(f"budget {recipe.budget}: {summary['average_bits']:.4f} bits per weight, scales included: {shares} "
         f"({summary['seconds']} s)")
    return {n: c for names, c in pick.items() for n in names}, summary


def _awq_layer(layer: nn.Module, linears: dict[str, nn.Linear], inputs, args, config,
               gptq: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """AWQ (awq.py) on one float layer: one forward with stat hooks (mean |x| and the Hessian of each
    pair's input), a scale search per pair, and the folds, before the layer is quantized. The folds
    are exact, so the quantization after (staged GPTQ, or round-to-nearest) sees the same function.
    Returns (the log's stats, {Linear: its input's Hessian after the folds} for round-to-nearest's
    clip search; empty before GPTQ, which builds its own from the scaled layer).
    Pairs: norm -> the Linears reading it (verified by tensor identity, as for SmoothQuant), and in
    layouts llmpress knows, up_proj -> down_proj and v_proj -> o_proj (only without grouped-query
    attention: one v channel would need one scale for several o columns with different searches)."""
    t0 = time.perf_counter()
    norms = {n: layer.get_submodule(n) for n, _ in NORM_READERS if _has_module(layer, n)}
    inner = [(p, r) for p, r in ((V_PROJ, O_PROJ), (UP_PROJ, DOWN_PROJ))
             if layout_of((getattr(config, "architectures", None) or [""])[0]) is not None
             and p in linears and r in linears and linears[p].out_features == linears[r].in_features]
    readers = {r for _, rs in NORM_READERS for r in rs if r in linears} | {r for _, r in inner}
    if not gptq:
        readers = set(linears)  # every Linear's Hessian, for the clip search (o_proj's too)
    stats = InputStats({n: linears[n] for n in readers}, hessian=True, act_mean=True, sources=norms)
    try:
        run_layer(layer, inputs, before_each=stats.new_sample)
    finally:
        stats.remove()
    pairs = []  # (label, readers, fold(s))
    for norm_name, rs in NORM_READERS:
        if norm_name in norms and all(r in linears and stats.fed_by[r] == {norm_name} for r in rs):
            offset = norm_weight_offset(norms[norm_name])
            if offset is not None:
                pairs.append((norm_name, rs, lambda s, n=norms[norm_name], rs=rs, o=offset:
                              fold_into_norm(n.weight, [linears[r].weight for r in rs], s, o)))
    for prev, r in inner:
        pairs.append((prev, (r,), lambda s, p=linears[prev], r=r: fold_into_rows(p.weight, p.bias, [linears[r].weight], s)))
    out = {"pairs": {}, "loss": 0.0, "rtn_loss": 0.0}
    hessians = {} if gptq else {o: stats.hessians[o].hessian() for o in set(stats.owner.values())}
    for label, rs, fold in pairs:
        if stats.tokens[rs[0]] == 0:
            continue
        owner = stats.owner[rs[0]]
        H = hessians[owner] if owner in hessians else stats.hessians[owner].hessian()
        res = awq.search_scales(stats.act_mean(rs[0]), [linears[r].weight for r in rs], H, args, rescore=not gptq)
        s = res.scales.to(H.device)
        fold(s)
        if owner in hessians:  # the readers' input is now x / s: H -> H / (s sᵀ)
            hessians[owner] = move_hessian(H, s)
        out["pairs"][f"{label} -> {', '.join(rs)}"] = {"ratio": res.ratio, "duo": res.duo}
        out["loss"] += res.loss
        out["rtn_loss"] += res.rtn_loss
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out, {n: hessians[stats.owner[n]] for n in linears if stats.owner.get(n) in hessians}


def _collect_stats(layer: nn.Module, prefix: str, linears, inputs, smooth: bool) -> InputStats:
    """One float forward of the layer over all samples with stat hooks (every MoE expert on every
    token). A target Linear that saw no token would get a zero Hessian and a meaningless
    "loss 0" result, so it stops the run with its name."""
    norms = {n: layer.get_submodule(n) for n, _ in NORM_READERS if _has_module(layer, n)}
    stats = InputStats(linears, hessian=True, act_max=smooth, sources=norms if smooth else None)
    calibrate_all_experts(layer, True)
    try:
        run_layer(layer, inputs, before_each=stats.new_sample)
    finally:
        calibrate_all_experts(layer, False)
        stats.remove()
    for experts, idle in unrouted_experts(layer).items():
        _log(f"{prefix}.{experts}: the router chose experts {idle} for no calibration token; "
             "they were calibrated on all tokens (calibrate-all-experts)")
    starved = stats.starved()
    if starved:
        raise CalibrationError(
            f"{', '.join(f'{prefix}.{n}' for n in starved)}: received no calibration tokens, so GPTQ has no data for "
            f"{'it' if len(starved) == 1 else 'them'}; add {'it' if len(starved) == 1 else 'them'} to `ignore` "
            "(--ignore), or quantize without data with --no-gptq (round-to-nearest)"
        )
    return stats


def _has_module(layer: nn.Module, name: str) -> bool:
    try:
        return isinstance(getattr(layer.get_submodule(name), "weight", None), torch.Tensor)
    except AttributeError:
        return False


def _smooth_layer(layer, linears, stats: InputStats, hessians, alpha: float, config) -> list[str]:
    """SmoothQuant folds on the generic path, only where they are exact: the norm's output is
    verified (by tensor identity, during calibration) to be what all its readers receive, and the
    norm's output scales with its weight (x·w, or Gemma's x·(1 + w)). Pairs found in the model but
    not foldable are returned, so that the run can say so."""
    skipped, folded = {}, set()
    for norm_name, readers in NORM_READERS:
        if not _has_module(layer, norm_name) or not all(r in linears for r in readers):
            continue
        norm = layer.get_submodule(norm_name)
        offset = norm_weight_offset(norm)
        if any(stats.fed_by[r] != {norm_name} for r in readers) or offset is None:
            skipped[readers] = f"{norm_name} -> {', '.join(readers)}"
            continue
        folded.add(readers)
        owner = stats.owner[readers[0]]
        ws = [linears[r].weight for r in readers]
        s = smoothing_scales(stats.act_max[owner], ws, alpha)
        fold_into_norm(norm.weight, ws, s, offset)
        hessians[owner] = move_hessian(hessians[owner], s)
    if V_PROJ in linears and O_PROJ in linears and stats.owner.get(O_PROJ) == O_PROJ:
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", heads) or heads
        v, o = linears[V_PROJ], linears[O_PROJ]
        if o.in_features == v.out_features * heads // kv:
            s_kv = vo_smoothing_scales(stats.act_max[O_PROJ], o.weight, heads, kv, alpha)
            s_o = fold_into_v(v.weight, v.bias, o.weight, s_kv, heads, kv)
            hessians[O_PROJ] = move_hessian(hessians[O_PROJ], s_o)
    return [msg for readers, msg in skipped.items() if readers not in folded]


def _activation_quant_hooks(linears: dict[str, nn.Linear], scheme) -> list:
    """During propagation, quantize Linear inputs per token as the engine will (W8A8, FP8)."""
    args = scheme.input_activations
    return [m.register_forward_pre_hook(lambda _m, a: (dynamic_per_token(a[0], args),)) for m in linears.values()]
