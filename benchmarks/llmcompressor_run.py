"""Peer-tool runner: quantize a model with llm-compressor (vLLM project) 0.14.

Run with the separate venv (llmpress is *not* importable there):

    /work/venvs/llmcompressor/bin/python benchmarks/llmcompressor_run.py \
        --model DIR --calib calib.json --scheme W4A16|W8A8|FP8_DYNAMIC \
        --group-size 64 --dampening 0.1 --output OUT_DIR [--smoothing 0.8] [--algorithm awq]

``--calib`` is a JSON file ``{"input_ids": [[int, ...], ...]}`` produced by
llmpress (already chat-templated and truncated).  The exact same samples are
fed to ``oneshot`` as a pre-tokenized ``datasets.Dataset``: no re-tokenization,
no shuffling (llm-compressor then visits them longest-first, batch size 1,
so nothing is truncated or padded).

Recipes follow the Neural Magic / RedHatAI model cards:
  * W4A16       GPTQ, int4 symmetric, per-group (``--group-size``), lm_head kept
  * W8A8        SmoothQuant(``--smoothing``) + GPTQ preset W8A8 (int8 per-channel
                weights, int8 dynamic per-token activations)
  * FP8_DYNAMIC round-to-nearest FP8 weights per channel + dynamic per-token
                FP8 activations, data-free
  * --algorithm awq (W4A16 / W4A16_ASYM): AWQModifier (its defaults: duo scaling,
                n_grid 20) + QuantizationModifier with the same int4 group scheme

The last stdout line is one JSON object with wall time (from process start,
imports included) and peak RSS.
"""

import argparse
import json
import resource
import time

import psutil

START = psutil.Process().create_time()

import llmcompressor  # noqa: E402
from compressed_tensors.quantization import (  # noqa: E402
    QuantizationArgs,
    QuantizationScheme,
    QuantizationStrategy,
    QuantizationType,
)
from datasets import Dataset  # noqa: E402
from llmcompressor import oneshot  # noqa: E402
from llmcompressor.modifiers.quantization import (  # noqa: E402
    GPTQModifier,
    QuantizationModifier,
)
from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

SCHEMES = ("W4A16", "W4A16_ASYM", "W8A8", "FP8_DYNAMIC")


def build_recipe(scheme: str, group_size: int, dampening: float, smoothing: float, actorder: str | None = None,
                 algorithm: str = "gptq"):
    if algorithm == "awq" and scheme not in ("W4A16", "W4A16_ASYM"):
        raise ValueError(f"--algorithm awq is for weight-only int4 (W4A16, W4A16_ASYM), not {scheme}")
    if scheme in ("W4A16", "W4A16_ASYM"):
        # Preset "W4A16" is hard-wired to group_size=128, which does not divide
        # SmolLM2-135M's hidden size (576), so spell the scheme out explicitly.
        weights = QuantizationArgs(
            num_bits=4,
            type=QuantizationType.INT,
            strategy=QuantizationStrategy.GROUP,
            group_size=group_size,
            symmetric=scheme == "W4A16",
            dynamic=False,
            actorder=actorder,
        )
        groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
        if algorithm == "awq":
            return [AWQModifier(), QuantizationModifier(targets="Linear", ignore=["lm_head"], config_groups=groups)]
        return GPTQModifier(
            targets="Linear",
            ignore=["lm_head"],
            dampening_frac=dampening,
            config_groups=groups,
        )
    if scheme == "W8A8":
        return [
            SmoothQuantModifier(smoothing_strength=smoothing),
            GPTQModifier(
                targets="Linear",
                scheme="W8A8",
                ignore=["lm_head"],
                dampening_frac=dampening,
            ),
        ]
    if scheme == "FP8_DYNAMIC":
        return QuantizationModifier(
            targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"]
        )
    raise ValueError(f"unknown scheme {scheme!r}")


def cpu_pinning_workaround() -> None:
    """llm-compressor 0.14's AWQModifier pins its cached activations (IntermediatesCache.pin_memory,
    to speed host-to-GPU copies), and pinning raises "Cannot access accelerator device when none is
    available" on a machine without a GPU. Pinning changes no value, so on such a machine it is
    skipped, for this process only."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.cuda.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def load_calibration(path: str) -> Dataset:
    with open(path) as f:
        ids = json.load(f)["input_ids"]
    if not ids:
        raise ValueError(f"{path}: no calibration samples")
    return Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="local HF model folder")
    p.add_argument("--calib", help="JSON {'input_ids': [[...], ...]}")
    p.add_argument("--scheme", required=True, choices=SCHEMES)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--dampening", type=float, default=0.1)
    p.add_argument("--smoothing", type=float, default=0.8)
    p.add_argument("--actorder", choices=["static", "group", "weight"], help="GPTQ act-order for W4A16 (default: its own)")
    p.add_argument("--algorithm", choices=["gptq", "awq"], default="gptq", help="W4A16: GPTQ, or AWQ + round-to-nearest")
    p.add_argument("--output", required=True)
    a = p.parse_args()

    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    recipe = build_recipe(a.scheme, a.group_size, a.dampening, a.smoothing, a.actorder, a.algorithm)
    if a.algorithm == "awq":
        cpu_pinning_workaround()

    if a.scheme == "FP8_DYNAMIC":  # data-free, like the model cards
        oneshot(model=model, recipe=recipe)
    else:
        if not a.calib:
            p.error(f"--calib is required for {a.scheme}")
        ds = load_calibration(a.calib)
        oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=ds,
            recipe=recipe,
            max_seq_length=max(len(x) for x in ds["input_ids"]),
            num_calibration_samples=len(ds),
            shuffle_calibration_samples=False,
            batch_size=1,
        )

    model.save_pretrained(a.output, save_compressed=True)
    tokenizer.save_pretrained(a.output)

    print(
        json.dumps(
            {
                "tool": "llmcompressor",
                "version": llmcompressor.__version__,
                "scheme": a.scheme,
                "algorithm": a.algorithm,
                "wall_s": round(time.time() - START, 2),
                "peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
                "output": a.output,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
