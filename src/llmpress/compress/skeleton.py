"""A model's structure with no memory, and its decoder layers materialized one at a time from the checkpoint.

compress (and the run recipe's and check's structure probes) never hold the whole model: `skeleton` builds
transformers' model class on the meta device, `materialize` loads one module's tensors from the memory-mapped
safetensors, and `trim_heap` returns the freed pages after each layer.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import nn

from ..checkpoint.shards import LazyCheckpoint
from .moe import linearize_experts
from .targets import ModelStructureError, find_decoder_layers


@functools.cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


def trim_heap() -> None:
    """Hand freed heap pages back to the OS after each layer. glibc keeps freed memory in its
    arenas, and each layer's temporaries (Hessians, Cholesky factors, float32 weights) differ in
    size, so without this the peak RSS of a layer-by-layer pass creeps up layer after layer."""
    if (libc := _libc()) is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def meta_model(src: Path):
    """The model class with its parameters on the meta device (structure and forward code, no
    memory) and its computed buffers real: rotary tables, Gemma's embedding scale and the like
    are not stored in checkpoints, so they must come from the model's own __init__. Fused
    mixture-of-experts modules become per-expert Linears (moe.py)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(src)
    if getattr(config, "is_encoder_decoder", False):
        raise ModelStructureError(f"{src}: {config.model_type} is an encoder-decoder model; llmpress compresses decoder-only LMs")
    try:
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    except ValueError as e:
        raise ModelStructureError(f"{src}: {config.model_type} is not a causal (decoder-only) LM transformers knows: {e}") from None
    if not hasattr(config, "num_hidden_layers"):
        raise ModelStructureError(f"{src}: config has no num_hidden_layers; not a decoder-only LM")
    model.eval()  # no dropout, no router jitter
    _, layers = find_decoder_layers(model, config.num_hidden_layers)
    for layer in layers:
        linearize_experts(layer)
    return config, model


def materialize(module: nn.Module, prefix: str, ckpt: LazyCheckpoint, device, dtype) -> dict[str, torch.dtype]:
    """Load `module`'s parameters (and any stored buffers) from the checkpoint; computed buffers
    keep their values and move to `device`. Returns the parameters' stored dtypes."""
    dtypes = {}
    for name, p in module.named_parameters():
        key = f"{prefix}.{name}"
        if key not in ckpt:
            raise ModelStructureError(f"{ckpt.folder}: tensor {key} is missing from the safetensors files")
        t = ckpt.get(key)
        dtypes[name] = t.dtype
        owner, _, pname = name.rpartition(".")
        mod = module.get_submodule(owner) if owner else module
        mod._parameters[pname] = nn.Parameter(t.to(device, dtype), requires_grad=False)
    for name, b in module.named_buffers():
        owner, _, bname = name.rpartition(".")
        mod = module.get_submodule(owner) if owner else module
        key = f"{prefix}.{name}"
        mod._buffers[bname] = ckpt.get(key).to(device, b.dtype) if key in ckpt else b.to(device)
    return dtypes
