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

With a float reference (float_stages: the float layer's stage inputs on the float
model's inputs, recipe `float_target`), each stage also sums Σ (x_fp - x) xᵀ, and
GPTQ aims each group at the float model's output instead of its own float output on
drifted inputs (gptq.asymmetric_target). Its statistics then come from the inputs
the Linear will multiply at run time: act_quant(x) for W8A8 / FP8.

staged_quantize wires a recipe's SmoothQuant folds into the stages: norm -> readers
just before each group is quantized, v -> o before stage 1, up -> down before stage 3
(its strength searched on sample rows of down_proj's float input).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import (
    DOWN, DOWN_PROJ, GATE_PROJ, GATE_UP, GROUPS, K_PROJ, O, O_PROJ, Q_PROJ, QKV, STAGED_LAYERS, UP_PROJ, V_PROJ,
)
from ..quant import dynamic_per_token
from .gptq import HessianAccumulator
from .smoothquant import (
    fold_into_norm, fold_into_up, fold_into_v, move_hessian, search_smoothing, smoothing_scales, vo_smoothing_scales,
)
from .targets import smooth_pairs


SEARCH_ROWS = 4096  # down_proj input rows handed to before_gate_up (a strength search), evenly strided


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
        quantize_group: Callable[[tuple[str, ...], torch.Tensor, torch.Tensor | None, torch.Tensor | None], None],
        want_act_max: bool = False,
        before_qkv: Callable[[torch.Tensor], torch.Tensor] | None = None,
        before_gate_up: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        reference: dict[tuple[str, ...], list[torch.Tensor]] | None = None,
    ) -> list[torch.Tensor]:
        """quantize_group(names, H, act_max, D) with D = 2/n Σ (x_fp - x)ᵀ x when `reference` (float_stages)
        is given, else None. before_qkv(max |a| of o_proj's float input) and before_gate_up(max |m| of
        down_proj's, ~SEARCH_ROWS rows of m [rows, intermediate]) smooth v -> o and up -> down, returning
        the scales s they divided a or m by (the reference's inputs are divided to match)."""
        L = self.layer
        ref = dict(reference or {})
        seen = self.act_quant if reference is not None else None
        # a norm fold (want_act_max) moves H after the fact, exact for x but not for act_quant(x)
        seen_norm = None if want_act_max else seen
        # stage 1: norm output feeds q, k, v
        acc = _Stats(want_act_max, ref.pop(QKV, None), seen_norm)
        for x, kw in inputs:
            acc.add(L.input_layernorm(x))
        if before_qkv is not None:  # SmoothQuant v -> o needs o_proj's float input before v is quantized
            o_max = _Stats(True)
            for x, kw in inputs:
                o_max.add_max_only(attention(L, L.input_layernorm(x), kw, self.float_lin))
            s = before_qkv(o_max.act_max)
            if ref.get(O) is not None:  # the float attention outputs in the folded basis too
                ref[O] = [(a.float() / s).to(a.dtype) for a in ref[O]]
        quantize_group(QKV, acc.hessian(), acc.act_max, acc.shift())
        # stage 2: attention output feeds o
        attn_out = []
        acc = _Stats(False, ref.pop(O, None), seen)
        for x, kw in inputs:
            a = attention(L, L.input_layernorm(x), kw, self.lin)
            acc.add(a)
            attn_out.append(a)
        quantize_group(O, acc.hessian(), None, acc.shift())
        # stage 3: residual + post-attention norm feeds gate, up
        resid = []
        acc = _Stats(want_act_max, ref.pop(GATE_UP, None), seen_norm)
        for (x, kw), a in zip(inputs, attn_out):
            x2 = x + self.lin(O_PROJ, a)
            resid.append(x2)
            acc.add(L.post_attention_layernorm(x2))
        del attn_out
        act = L.mlp.act_fn
        if before_gate_up is not None:  # SmoothQuant up -> down needs down_proj's float input before up is quantized
            m_max = _Stats(True)
            stride = max(1, sum(x2.numel() // x2.shape[-1] for x2 in resid) // SEARCH_ROWS)
            rows = []
            for x2 in resid:
                h2 = L.post_attention_layernorm(x2)
                m = act(self.float_lin(GATE_PROJ, h2)) * self.float_lin(UP_PROJ, h2)
                m_max.add_max_only(m)
                rows.append(m.reshape(-1, m.shape[-1])[::stride])
            s = before_gate_up(m_max.act_max, torch.cat(rows))
            if ref.get(DOWN) is not None:
                ref[DOWN] = [(m.float() / s).to(m.dtype) for m in ref[DOWN]]
        quantize_group(GATE_UP, acc.hessian(), acc.act_max, acc.shift())
        # stage 4: gated activation feeds down
        hidden = []
        acc = _Stats(False, ref.pop(DOWN, None), seen)
        for x2 in resid:
            h2 = L.post_attention_layernorm(x2)
            m = act(self.lin(GATE_PROJ, h2)) * self.lin(UP_PROJ, h2)
            acc.add(m)
            hidden.append(m)
        quantize_group(DOWN, acc.hessian(), None, acc.shift())
        # stage 5: the quantized layer's output
        return [x2 + self.lin(DOWN_PROJ, m) for x2, m in zip(resid, hidden)]


@torch.no_grad()
def float_stages(layer: nn.Module, inputs: list[tuple[torch.Tensor, dict]]
                 ) -> tuple[dict[tuple[str, ...], list[torch.Tensor]], list[torch.Tensor]]:
    """The float layer on the float model's inputs: each group's input per sample (what the quantized
    layer's Linears should answer to, StagedLayer.run's `reference`) and the layer's outputs (the next
    layer's float inputs). Call it before any weight of the layer is quantized."""
    L = layer
    stages: dict[tuple[str, ...], list[torch.Tensor]] = {QKV: [], O: [], GATE_UP: [], DOWN: []}
    outs = []
    lin = lambda name, t: L.get_submodule(name)(t)  # noqa: E731
    for x, kw in inputs:
        h = L.input_layernorm(x)
        a = attention(L, h, kw, lin)
        x2 = x + lin(O_PROJ, a)
        h2 = L.post_attention_layernorm(x2)
        m = L.mlp.act_fn(lin(GATE_PROJ, h2)) * lin(UP_PROJ, h2)
        for group, t in ((QKV, h), (O, a), (GATE_UP, h2), (DOWN, m)):
            stages[group].append(t)
        outs.append(x2 + lin(DOWN_PROJ, m))
    return stages, outs


class _Stats:
    """Hessian sum and optional per-channel max |x| over all samples of one input. With the float
    model's inputs x_fp for the same samples (`reference`, in order), also D = Σ (x_fp - x)ᵀ x; with
    `seen` (the run-time activation quantizer), the statistics are of seen(x), what the Linear multiplies."""

    def __init__(self, act_max: bool, reference: list[torch.Tensor] | None = None,
                 seen: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.h: HessianAccumulator | None = None
        self.want = act_max
        self.act_max: torch.Tensor | None = None
        self.reference = reference
        self.seen = seen
        self.d: torch.Tensor | None = None  # [cols, cols] float32
        self.k = 0  # samples added

    def add(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])  # [tokens, cols]
        if self.seen is not None:
            flat = self.seen(flat)
        if self.h is None:
            self.h = HessianAccumulator(flat.shape[-1], flat.device)
        self.h.add(flat)
        if self.reference is not None:
            x_fp = self.reference[self.k].reshape(flat.shape)
            self.reference[self.k] = None  # spent: free it as we go
            self._add_shift(x_fp, flat)
        self.k += 1
        if self.want:
            self.add_max_only(flat)

    def _add_shift(self, x_fp: torch.Tensor, x: torch.Tensor) -> None:
        """D += (x_fp - x)ᵀ x. bf16 inputs multiply in bf16 (the drift rounded once, relative to itself),
        512 rows at a time summed in float32, as the Hessian's products are (gptq.HessianAccumulator)."""
        if self.d is None:
            self.d = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
        if x.dtype != torch.bfloat16:
            self.d.addmm_((x_fp.float() - x.float()).T, x.float())
            return
        drift = (x_fp.float() - x.float()).to(torch.bfloat16)
        for a, b in zip(drift.split(512), x.split(512)):
            self.d += (a.T @ b).float()

    def shift(self) -> torch.Tensor | None:
        """D on H's scale, 2/n Σ (x_fp - x)ᵀ x [cols, cols]; None without a reference."""
        return None if self.d is None else self.d.mul_(2.0 / max(self.h.n, 1))

    def add_max_only(self, x: torch.Tensor) -> None:
        m = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
        self.act_max = m if self.act_max is None else torch.maximum(self.act_max, m)

    def hessian(self) -> torch.Tensor:
        return self.h.hessian()


def staged_quantize(layer: nn.Module, linears: dict[str, nn.Linear], inputs, recipe, config, smooth: bool,
                    quantize: Callable, reference: dict | None = None, chosen: dict | None = None) -> list[torch.Tensor]:
    """One layer through StagedLayer with `recipe`'s SmoothQuant folds (compress.Recipe) applied to each
    group just before quantize(names, H, D) rounds it; `reference`: float_stages'. The up -> down
    strength used is put in `chosen`. Returns the quantized layer's outputs."""
    chosen = {} if chosen is None else chosen
    scheme = recipe.quant_scheme
    alpha = recipe.smoothing_strength
    norms = dict((tuple(readers), norm) for norm, readers in smooth_pairs(layer, set(linears)))

    def quantize_group(names, H, act_max, D):
        if smooth and act_max is not None and names in norms:
            ws = [linears[n].weight for n in names]
            s = smoothing_scales(act_max, ws, alpha)
            fold_into_norm(layer.get_submodule(norms[names]).weight, ws, s)
            H = move_hessian(H, s)
            D = None if D is None else move_hessian(D, s)  # x and x_fp are both divided by s
        quantize(names, H, D)

    def before_qkv(o_act_max):
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", heads) or heads
        v, o = linears[V_PROJ], linears[O_PROJ]
        s_kv = vo_smoothing_scales(o_act_max, o.weight, heads, kv, alpha)
        return fold_into_v(v.weight, v.bias, o.weight, s_kv, heads, kv)

    def before_gate_up(m_max, m_rows):
        up, down = linears[UP_PROJ].weight, linears[DOWN_PROJ].weight
        alpha = recipe.mlp_smoothing_strength
        if alpha is None:  # searched: the strength with the least output error on sample rows
            s, alpha, _ = search_smoothing(m_rows, down, m_max, scheme.weights, act_quant)
        else:
            s = smoothing_scales(m_max, [down], alpha)
        chosen["mlp_smoothing_strength"] = alpha
        fold_into_up(up, down, s)
        return s

    act_quant = None
    if scheme.input_activations is not None:
        args = scheme.input_activations
        act_quant = lambda x: dynamic_per_token(x, args)  # noqa: E731
    smooth_mlp = act_quant is not None and scheme.input_activations.type == "int" and recipe.mlp_smoothing_strength != 0
    staged = StagedLayer(layer, act_quant)
    return staged.run(inputs, quantize_group, want_act_max=smooth, before_qkv=before_qkv if smooth else None,
                      before_gate_up=before_gate_up if smooth_mlp else None, reference=reference)
