"""True-sequential quantization of a Llama-family decoder layer in one forward pass.

The generic path (calibrate.run_layer) runs a layer twice per calibration
round: once to collect statistics, once more with quantized weights to feed the
next layer; every Linear's Hessian there comes from float inputs. Here the
layer is computed in stages over all samples, quantizing each group of Linears
as soon as its inputs are known, so later groups see the outputs of already
quantized ones (GPTQ's "true sequential" order, Frantar et al. 2022, §4):

  stage 1  h  = input_layernorm(x)                      -> H(q,k,v)  -> quantize q, k, v
  stage 2  a  = attention(q(h), k(h), v(h))              -> H(o)      -> quantize o
  stage 3  x2 = x + o(a);  h2 = post_attention_layernorm(x2) -> H(gate,up) -> quantize gate, up
  stage 4  m  = act(gate(h2)) * up(h2)                   -> H(down)   -> quantize down
  stage 5  out = x2 + down(m)                            -> the next layer's input

Each stage's activations are computed once, so the whole layer costs one
forward pass instead of two. Layers of other shapes use the generic path.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import (
    DOWN, DOWN_PROJ, GATE_PROJ, GATE_UP, GROUPS, K_PROJ, O, O_PROJ, Q_PROJ, QKV, STAGED_LAYERS, UP_PROJ, V_PROJ,
)
from .gptq import HessianAccumulator


def supports(layer: nn.Module, linears: dict, config, max_seq_len: int) -> bool:
    """Staged path only for the exact layer shape it reproduces, all seven Linears quantized."""
    if type(layer).__name__ not in STAGED_LAYERS or set(linears) != {n for g in GROUPS for n in g}:
        return False
    attn = layer.self_attn
    if any(hasattr(attn, n) for n in ("q_norm", "k_norm")):
        return False
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and max_seq_len > window:
        return False
    return getattr(config, "hidden_act", "silu") in ("silu", "gelu", "gelu_pytorch_tanh")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attention(layer: nn.Module, h: torch.Tensor, kw: dict, lin: Callable) -> torch.Tensor:
    """Causal self-attention of h [B, T, hidden] -> [B, T, heads*head_dim], before o_proj.
    `lin(name, x)` applies a Linear (so callers can quantize its input)."""
    attn = layer.self_attn
    B, T, _ = h.shape
    d = attn.head_dim
    q = lin(Q_PROJ, h).view(B, T, -1, d).transpose(1, 2)  # [B, heads, T, d]
    k = lin(K_PROJ, h).view(B, T, -1, d).transpose(1, 2)  # [B, kv, T, d]
    v = lin(V_PROJ, h).view(B, T, -1, d).transpose(1, 2)
    cos, sin = kw["position_embeddings"]  # [B, T, d]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    mask = kw.get("attention_mask")
    if mask is not None and mask.dtype != torch.bool and not torch.is_floating_point(mask):
        mask = mask.bool()
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, scale=attn.scaling, enable_gqa=q.shape[1] != k.shape[1]
    )
    return o.transpose(1, 2).reshape(B, T, -1)


class StagedLayer:
    """Runs one Llama-family layer stage by stage over all calibration samples.

    quantize_group(names, H, act_max) quantizes those Linears in place (their
    weights become the dequantized values) given their shared input's Hessian.
    act_quant, if given, fake-quantizes the inputs of already-quantized Linears
    per token, as the engine will at run time (W8A8, FP8).
    """

    def __init__(self, layer: nn.Module, act_quant: Callable | None = None):
        self.layer = layer
        self.act_quant = act_quant

    def lin(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return self.layer.get_submodule(name)(x)

    def float_lin(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.layer.get_submodule(name)(x)

    @torch.no_grad()
    def run(
        self,
        inputs: list[tuple[torch.Tensor, dict]],
        quantize_group: Callable[[tuple[str, ...], torch.Tensor, torch.Tensor | None], None],
        want_act_max: bool = False,
        before_qkv: Callable[[torch.Tensor], None] | None = None,
    ) -> list[torch.Tensor]:
        L = self.layer
        # stage 1: norm output feeds q, k, v
        acc = _Stats(want_act_max)
        for x, kw in inputs:
            acc.add(L.input_layernorm(x))
        if before_qkv is not None:  # SmoothQuant v -> o needs o_proj's float input before v is quantized
            o_max = _Stats(True)
            for x, kw in inputs:
                o_max.add_max_only(attention(L, L.input_layernorm(x), kw, self.float_lin))
            before_qkv(o_max.act_max)
        quantize_group(QKV, acc.hessian(), acc.act_max)
        # stage 2: attention output feeds o
        attn_out = []
        acc = _Stats(False)
        for x, kw in inputs:
            a = attention(L, L.input_layernorm(x), kw, self.lin)
            acc.add(a)
            attn_out.append(a)
        quantize_group(O, acc.hessian(), None)
        # stage 3: residual + post-attention norm feeds gate, up
        resid = []
        acc = _Stats(want_act_max)
        for (x, kw), a in zip(inputs, attn_out):
            x2 = x + self.lin(O_PROJ, a)
            resid.append(x2)
            acc.add(L.post_attention_layernorm(x2))
        del attn_out
        quantize_group(GATE_UP, acc.hessian(), acc.act_max)
        # stage 4: gated activation feeds down
        hidden = []
        acc = _Stats(False)
        act = L.mlp.act_fn
        for x2 in resid:
            h2 = L.post_attention_layernorm(x2)
            m = act(self.lin(GATE_PROJ, h2)) * self.lin(UP_PROJ, h2)
            acc.add(m)
            hidden.append(m)
        quantize_group(DOWN, acc.hessian(), None)
        # stage 5: the quantized layer's output
        return [x2 + self.lin(DOWN_PROJ, m) for x2, m in zip(resid, hidden)]


class _Stats:
    """Hessian sum and optional per-channel max |x| over all samples of one input."""

    def __init__(self, act_max: bool):
        self.h: HessianAccumulator | None = None
        self.want = act_max
        self.act_max: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])
        if self.h is None:
            self.h = HessianAccumulator(flat.shape[-1], flat.device)
        self.h.add(flat)
        if self.want:
            self.add_max_only(flat)

    def add_max_only(self, x: torch.Tensor) -> None:
        m = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
        self.act_max = m if self.act_max is None else torch.maximum(self.act_max, m)

    def hessian(self) -> torch.Tensor:
        return self.h.hessian()
