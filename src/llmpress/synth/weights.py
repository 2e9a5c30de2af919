"""Random weights that look trained where it matters to the compression algorithms.

Pure tensor functions: each tensor is a function of (seed, its name, the config) only, so a
checkpoint is deterministic for a seed, independent of write order, and `--layers 2` gives exactly
the first two layers of the full model. Tensors are filled in row chunks, so generating one costs
its own bytes plus a 64 MB float32 buffer, never a float32 copy of it.

What each choice is for:
  - Linear weights N(0, 1/in) (Kaiming-like; fan-in scaling keeps every layer's output at the
    scale of its input), times a *per-layer gain* (a trend over depth plus lognormal noise: trained
    Llamas' weight norms differ layer to layer, so GPTQ's and the observers' scales do too) and a
    *per-output-channel* lognormal spread (trained rows differ ~2x in norm: per-channel and group
    scales see a spread, not one value).
  - o_proj / down_proj scaled by 1/sqrt(2 * depth) (GPT-2's residual scaling, Radford et al. 2019):
    the residual stream grows like sqrt(depth), so 32 random layers stay finite in bf16.
  - RMSNorm weights around 1 with a few *large-magnitude channels* (8-24x, the same channels in
    every layer): trained LLMs carry systematic outlier channels in the inputs of their Linears
    (Dettmers et al. 2022, LLM.int8(); Xiao et al. 2023, SmoothQuant; Sun et al. 2024, "massive
    activations"). They are what SmoothQuant migrates into the weights, what act-order visits
    first (largest Hessian diagonal) and what per-token int8 / fp8 activation scales must absorb.
  - Embeddings N(0, initializer_range): rows of norm ~1.3 at hidden 4096, the scale of a trained
    Llama's; lm_head N(0, 1/hidden) with a row spread, so logits have a std of ~1-2 (a peaked
    distribution, no ties) and some tokens are likelier than others.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import torch

CHUNK_ELEMS = 1 << 24  # 64 MB of float32 per generation step
_LAYER = re.compile(r"\.layers\.(\d+)\.")
RESIDUAL_WRITERS = ("o_proj", "down_proj")


@dataclass(frozen=True)
class InitConfig:
    """What the initialisation needs from the model config."""

    hidden_size: int
    depth: int  # the config's own num_hidden_layers (not --layers): scales must not change with it
    initializer_range: float = 0.02
    seed: int = 0


def tensor_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed per (seed, tensor name); Python's hash() is salted per process."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _gen(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(tensor_seed(seed, name))


def layer_gains(cfg: InitConfig) -> torch.Tensor:
    """[depth] per-layer weight gains: 0.75 -> 1.25 over depth, times lognormal(0, 0.2) noise."""
    z = torch.randn(cfg.depth, generator=_gen(cfg.seed, "layer-gains"))
    trend = 0.75 + 0.5 * torch.arange(cfg.depth) / max(cfg.depth - 1, 1)
    return trend * torch.exp(0.2 * z)


def outlier_channels(cfg: InitConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(channel ids [k], gains [k]): k = hidden/512 (8 at 4096) channels, gains log-uniform in
    [8, 24], shared by every layer's norms (outlier channels are systematic, not per layer)."""
    g = _gen(cfg.seed, "outlier-channels")
    k = max(2, cfg.hidden_size // 512)
    ids = torch.randperm(cfg.hidden_size, generator=g)[:k].sort().values
    gains = torch.exp(math.log(8) + (math.log(24) - math.log(8)) * torch.rand(k, generator=g))
    return ids, gains


def fill_normal(out: torch.Tensor, gen: torch.Generator, std: float, row_scale: torch.Tensor | None = None) -> None:
    """out [rows, cols] (any float dtype) <- N(0, std²) * row_scale[:, None], CHUNK_ELEMS at a time."""
    rows, cols = out.shape
    per = max(1, CHUNK_ELEMS // cols)
    buf = torch.empty(min(per, rows), cols)
    for r0 in range(0, rows, per):
        b = buf[: min(per, rows - r0)]
        b.normal_(0.0, std, generator=gen)
        if row_scale is not None:
            b.mul_(row_scale[r0 : r0 + b.shape[0], None])
        out[r0 : r0 + b.shape[0]].copy_(b)


def init_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, cfg: InitConfig) -> torch.Tensor:
    """The synthetic value of parameter `name` (a Hugging Face Llama / Mistral / Qwen2 name)."""
    out = torch.empty(shape, dtype=dtype)
    gen = _gen(cfg.seed, name)
    m = _LAYER.search(name)
    layer = int(m.group(1)) if m else None
    gain = float(layer_gains(cfg)[layer]) if layer is not None and layer < cfg.depth else 1.0
    if name.endswith("embed_tokens.weight"):
        fill_normal(out, gen, cfg.initializer_range)
    elif name.endswith("norm.weight"):  # RMSNorm: ~1 with a lognormal(0, 0.1) spread
        w = torch.exp(0.1 * torch.randn(shape, generator=gen))
        if layer is not None:  # input_layernorm / post_attention_layernorm: the outlier channels
            ids, gains = outlier_channels(cfg)
            w[ids] *= gains * torch.exp(0.1 * torch.randn(len(ids), generator=gen))
        out.copy_(w)
    elif name.endswith(".bias"):
        out.copy_(0.02 * torch.randn(shape, generator=gen))
    elif len(shape) == 2:  # a Linear [out, in]
        rows, cols = shape
        spread = 0.2 if name.startswith("lm_head") else 0.3
        row_scale = torch.exp(spread * torch.randn(rows, generator=gen))
        std = gain / math.sqrt(cols)
        if any(f".{w}." in name for w in RESIDUAL_WRITERS):
            std /= math.sqrt(2 * cfg.depth)
        fill_normal(out, gen, std, row_scale)
    else:
        out.copy_(0.02 * torch.randn(shape, generator=gen))
    return out
