"""One decoder layer of a model, float inputs: the readers' true output error tr(ΔW H ΔWᵀ) (H = 2/n Σ x xᵀ
over the calibration tokens, no dampening) of round-to-nearest, AWQ + round-to-nearest, GPTQ and
AWQ + GPTQ, per AWQ pair (q/k/v, gate/up, down), with the scheme's observer (MSE for int4).

    PYTHONPATH=src .venv/bin/python benchmarks/awq_layer_error.py [--model default] [--layer 0] \
        [--num-samples 8] [--max-seq-len 512] [--group-size 64]

GPTQ's own loss is an estimate under its dampened Hessian (0.1 x mean diag H), which AWQ's scaling
changes; this compares all four on the same undampened objective. Float inputs for every pair (not
compress's true-sequential staging), so layer 0 is exact and later layers are approximate."""
from __future__ import annotations

import argparse
import time

import torch

from llmpress.checkpoint.shards import LazyCheckpoint
from llmpress.compress import awq, calibrate, oneshot
from llmpress.compress.calibrate import InputStats, run_layer
from llmpress.compress.gptq import gptq_quantize, rtn_quantize
from llmpress.compress.recipe import Recipe
from llmpress.compress.smoothquant import move_hessian
from llmpress.compress.targets import find_decoder_layers, target_linears
from llmpress.models import resolve_model
from llmpress.quant import dequantize

PAIRS = {"q/k/v": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
         "gate/up": ["mlp.gate_proj", "mlp.up_proj"], "down": ["mlp.down_proj"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=64)
    a = ap.parse_args()
    t0 = time.time()
    src = resolve_model(a.model)
    recipe = Recipe(group_size=a.group_size, num_samples=a.num_samples, max_seq_len=a.max_seq_len)
    args = recipe.quant_scheme.weights
    config, skeleton = oneshot.meta_model(src)
    prefix, layers = find_decoder_layers(skeleton, config.num_hidden_layers)
    ckpt = LazyCheckpoint(src)
    calib, _ = calibrate.calibration_inputs(src, skeleton, layers, recipe, ckpt, torch.device("cpu"), torch.float32)
    for i in range(a.layer + 1):  # float layers up to the one measured
        oneshot.materialize(layers[i], f"{prefix}.{i}", ckpt, "cpu", torch.float32)
        if i < a.layer:
            calib.hidden = run_layer(layers[i], calib.layer(i))
            layers[i].to("meta")
    layer = layers[a.layer]
    linears = target_linears(layer, f"{prefix}.{a.layer}", recipe.targets, recipe.ignore)
    stats = InputStats(linears, hessian=True, act_mean=True)
    run_layer(layer, calib.layer(a.layer), before_each=stats.new_sample)
    stats.remove()

    def err(dW, H):
        return float(((dW @ H) * dW).sum())

    def deq(res):
        return dequantize(res.q, res.scale, res.zero_point).float()

    print(f"layer {a.layer}, {a.num_samples} x {a.max_seq_len}, W4A16 g{a.group_size}, observer {args.observer}")
    print("| pair | RTN | AWQ + RTN | GPTQ | AWQ + GPTQ | AWQ's r (awq; awq+gptq) |")
    print("|---|---:|---:|---:|---:|---|")
    total = [0.0] * 4
    for name, readers in PAIRS.items():
        H = stats.hessians[stats.owner[readers[0]]].hessian()
        Ws = [linears[n].weight.detach().float() for n in readers]
        res = awq.search_scales(stats.act_mean(readers[0]), Ws, H, args)  # as compress --algorithm awq
        res_g = awq.search_scales(stats.act_mean(readers[0]), Ws, H, args, rescore=False)  # as awq+gptq
        s, sg, Hs = res.scales, res_g.scales, move_hessian(H, res_g.scales)
        e = [0.0] * 4
        for W in Ws:
            e[0] += err(W - deq(rtn_quantize(W, args, torch.float32)), H)
            e[1] += err(W - deq(rtn_quantize(W * s, args, torch.float32, move_hessian(H, s))) / s, H)  # + the clip
            e[2] += err(W - deq(gptq_quantize(W, H, args, recipe.dampening_frac, torch.float32, warn=print)), H)
            e[3] += err(W - deq(gptq_quantize(W * sg, Hs, args, recipe.dampening_frac, torch.float32, warn=print)) / sg, H)
        total = [t + x for t, x in zip(total, e)]
        rs = "; ".join(f"{x.ratio:.2f}{' duo' if x.duo else ''}" for x in (res, res_g))
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in e) + f" | {rs} |", flush=True)
    print("| all | " + " | ".join(f"{x:.3f}" for x in total) + " | |")
    print(f"wall {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
