"""Load a Hugging Face folder (dense or compressed-tensors) into the engine's Model.

Tensors are read one at a time from memory-mapped safetensors (`LazyCheckpoint`), and
each quantized Linear goes straight into its kernel's compressed layout: no dense copy
of a quantized weight is ever made for the whole model. q/k/v and gate/up are fused
into one weight each when they share a format, so each step runs two fewer GEMMs per
layer and the threads split one larger output dimension.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint.compressed_tensors import pack_int, unpack_int
from ..checkpoint.shards import LazyCheckpoint
from ..layout import DOWN, GATE_UP, K_NORM, O, Q_NORM, QKV
from ..quant import ConfigGroup, QuantizationConfig
from . import extension, linear
from .model import Layer, Model, ModelConfig, UnsupportedArchitecture

QUANT_SUFFIXES = ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx", "weight")


class UnsupportedCheckpoint(UnsupportedArchitecture):
    """A checkpoint the embedded engine cannot run; the message names the way out."""


def quantization_config(qc: dict | None) -> QuantizationConfig:
    """config.json's quantization_config, refused with the way out where the engine cannot run it."""
    if not qc:
        return QuantizationConfig("", None, ())
    method = qc.get("quant_method")
    if method != "compressed-tensors":
        raise UnsupportedCheckpoint(
            f"quantization method {method!r} is not supported; the embedded engine reads "
            "compressed-tensors checkpoints (llmpress or llm-compressor output)"
        )
    fmt = qc.get("format")
    if fmt not in ("pack-quantized", "int-quantized", "float-quantized", "naive-quantized", "dense", "mixed-precision", None):
        raise UnsupportedCheckpoint(f"compressed-tensors format {fmt!r} is not supported (2:4 sparse / marlin layouts need vLLM)")
    if qc.get("sparsity_config"):
        raise UnsupportedCheckpoint("sparse checkpoints (sparsity_config) are not supported by the embedded engine; use --engine vllm")
    if qc.get("kv_cache_scheme"):
        raise UnsupportedCheckpoint("quantized KV cache (kv_cache_scheme) is not supported by the embedded engine")
    if qc.get("transform_config"):
        raise UnsupportedCheckpoint("transformed checkpoints (transform_config, e.g. QuIP/SpinQuant) are not supported")
    try:
        return QuantizationConfig.from_dict(qc)
    except ValueError as e:
        raise UnsupportedCheckpoint(f"quantization_config: {e}") from None


def _tensors(ckpt: LazyCheckpoint, prefix: str, device: torch.device) -> dict[str, torch.Tensor]:
    """One Linear's stored tensors, copied from the memory map straight to `device` (weight_shape stays on the host)."""
    return {s: ckpt.get(f"{prefix}.{s}").to(device if s != "weight_shape" else "cpu")
            for s in QUANT_SUFFIXES if f"{prefix}.{s}" in ckpt}


def _fuse(parts: list[dict[str, torch.Tensor]], group: ConfigGroup | None) -> dict[str, torch.Tensor] | None:
    """Concatenate several Linears' stored tensors along the output dim (rows), so they
    run as one weight. None when they cannot be fused (mixed schemes)."""
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        return None
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        if k == "weight_shape":
            shapes = [p[k].tolist() for p in parts]
            if len({s[1] for s in shapes}) != 1:
                return None
            out[k] = torch.tensor([sum(s[0] for s in shapes), shapes[0][1]], dtype=torch.int64)
        elif k == "weight_zero_point" and "weight_packed" in keys:
            bits = group.weights.num_bits
            rows = [int(p["weight_shape"][0]) for p in parts]
            zps = [unpack_int(p[k], bits, n, dim=0) for p, n in zip(parts, rows)]
            out[k] = pack_int(torch.cat(zps), bits, dim=0)
        elif k == "weight_g_idx":
            return None
        else:
            out[k] = torch.cat([p[k] for p in parts])
    return out


class Concat:
    """Several weights applied to the same input, outputs concatenated (unfusable case)."""

    def __init__(self, parts: list):
        self.parts = parts
        self.nbytes = sum(p.nbytes for p in parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


def _storage_dtype(stored: torch.dtype, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype an unquantized matrix is kept in. A bf16 checkpoint run in float32 on the CPU
    stays bf16: widening bf16 is exact, so the float32 math sees the same values, and our bf16
    GEMV reads half the bytes (1.5x faster than torch's fp32 sgemv at one row, measured by
    benchmarks/engine_kernels.py). Otherwise: the engine dtype."""
    if stored == torch.bfloat16 and dtype == torch.float32 and device.type == "cpu" and extension.available():
        return torch.bfloat16
    return dtype


def _weight(tensors: dict[str, torch.Tensor], group: ConfigGroup | None, name: str, dtype: torch.dtype):
    if group is None or "weight_scale" not in tensors:
        if "weight" not in tensors:
            raise UnsupportedCheckpoint(f"{name}: no 'weight' tensor in the checkpoint")
        w = tensors["weight"]
        return linear.DenseWeight(w.to(_storage_dtype(w.dtype, dtype, w.device)))
    try:
        return linear.make_weight(tensors, group.weights, group.input_activations)
    except ValueError as e:
        raise UnsupportedCheckpoint(f"{name}: {e}") from None


def _linear(ckpt: LazyCheckpoint, qc: QuantizationConfig, names: list[str], dtype: torch.dtype, device: torch.device):
    groups = [qc.group_for(n) for n in names]
    parts = [_tensors(ckpt, n, device) for n in names]
    for n, p in zip(names, parts):
        if not p:
            raise UnsupportedCheckpoint(f"checkpoint has no weights for {n}")
    if len(names) == 1:
        return _weight(parts[0], groups[0], names[0], dtype)
    if all(g == groups[0] for g in groups):
        fused = _fuse(parts, groups[0])
        if fused is not None:
            return _weight(fused, groups[0], "+".join(names), dtype)
    return Concat([_weight(p, g, n, dtype) for p, g, n in zip(parts, groups, names)])


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Model:
    """Build the engine Model from a local folder (config.json + safetensors) on `device`: each
    tensor goes from the memory map to the device on its own, so host memory never holds the model."""
    folder, device = Path(folder), torch.device(device)
    linear.dispatch_overrides()  # a bad LLMPRESS_SMALL_M_MAX / LLMPRESS_AMX_M is refused before any work
    hf = json.loads((folder / "config.json").read_text())
    cfg = ModelConfig.from_hf(hf)
    lay = cfg.layout
    qc = quantization_config(hf.get("quantization_config"))
    ckpt = LazyCheckpoint(folder)
    pre = "model"

    def dense(name: str) -> torch.Tensor:
        if name not in ckpt:
            raise UnsupportedCheckpoint(f"checkpoint is missing tensor {name!r}")
        return ckpt.get(name).to(device, dtype)

    def norm(name: str) -> torch.Tensor:
        """An RMSNorm's weight as the engine multiplies by it: Gemma's (1 + w) computed in float32, as
        its forward does, then rounded to the engine dtype once."""
        if not lay.norm_offset:
            return dense(name)
        if name not in ckpt:
            raise UnsupportedCheckpoint(f"checkpoint is missing tensor {name!r}")
        return (1.0 + ckpt.get(name).float()).to(device, dtype)

    layers = []
    for i in range(cfg.num_layers):
        p = f"{pre}.layers.{i}"

        def fused(names: tuple[str, ...]):
            return _linear(ckpt, qc, [f"{p}.{n}" for n in names], dtype, device)

        w = {n: norm(f"{p}.{n}.weight") for n in lay.norms}
        w.update(qkv=fused(QKV), o_proj=fused(O), gate_up=fused(GATE_UP), down_proj=fused(DOWN))
        if lay.qk_norm:
            w.update(q_norm=norm(f"{p}.{Q_NORM}.weight"), k_norm=norm(f"{p}.{K_NORM}.weight"))
        if f"{p}.{QKV[0]}.bias" in ckpt:
            w["qkv_bias"] = torch.cat([dense(f"{p}.{n}.bias") for n in QKV])
        layers.append(Layer(cfg, w, i))
    name = f"{pre}.embed_tokens.weight"
    if name not in ckpt:
        raise UnsupportedCheckpoint(f"checkpoint is missing tensor {name!r}")
    embed = ckpt.get(name)
    embed = embed.to(device, _storage_dtype(embed.dtype, dtype, device))  # rows are widened to `dtype` as they are looked up
    if cfg.tie_word_embeddings or "lm_head.weight" not in ckpt and "lm_head.weight_scale" not in ckpt:
        lm_head = linear.DenseWeight(embed)
        lm_head.shares_embedding = lm_head.weight.data_ptr() == embed.data_ptr()  # no padded copy
    else:
        lm_head = _linear(ckpt, qc, ["lm_head"], dtype, device)
    return Model(cfg, embed, layers, norm(f"{pre}.norm.weight"), lm_head, dtype)
