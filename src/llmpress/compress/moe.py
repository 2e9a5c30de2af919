"""Mixture-of-experts blocks for calibration: experts as per-expert Linears, every expert
calibrated on every token.

transformers 5 stores a block's experts as two 3-D parameters (Mixtral, Qwen2/3-MoE, ...):
    gate_up_proj [E, 2I, H]  (rows :I are gate_proj, I: are up_proj)
    down_proj    [E, H, I]
while checkpoints keep one Linear per expert (`mlp.experts.{e}.gate_proj.weight`, ...), the
layout compressed-tensors quantizes and vLLM reads. `linearize_experts` swaps each such module
of the meta skeleton for `LinearExperts`, whose parameter names are the checkpoint's.

A router sends each token to top-k of E experts, so on a few hundred calibration samples some
experts see few tokens or none, and GPTQ has no Hessian for them. With `calibrate_all` every
expert runs on every token, while only the routed tokens' outputs, weighted by the router, are
added: the block's output is the model's own, and each expert's Hessian covers the whole
calibration set (llm-compressor's `moe_calibrate_all_experts`).
"""
from __future__ import annotations

import torch
from torch import nn

from .targets import ModelStructureError


class ExpertMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act_fn: nn.Module):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LinearExperts(nn.ModuleList):
    """Drop-in for transformers' fused `*Experts`: forward(hidden [N, H], top_k_index [N, k],
    top_k_weights [N, k]) -> [N, H], the same sum over routed experts."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, act_fn: nn.Module):
        super().__init__(ExpertMLP(hidden, intermediate, act_fn) for _ in range(num_experts))
        self.num_experts = num_experts
        self.calibrate_all = False
        # tokens the router chose, per expert (a plain attribute: not a parameter, not saved)
        self.routed_tokens = torch.zeros(num_experts, dtype=torch.long, device="cpu")

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        routed = top_k_index.flatten()
        self.routed_tokens += torch.bincount(routed[routed < self.num_experts].cpu(), minlength=self.num_experts)
        for e, expert in enumerate(self):
            token_idx, slot = torch.where(top_k_index == e)  # [n_e]
            if self.calibrate_all:
                y = expert(hidden)[token_idx]  # every token reaches the expert's Linears; the routed ones count
            elif token_idx.numel():
                y = expert(hidden[token_idx])
            else:
                continue
            out.index_add_(0, token_idx, (y * top_k_weights[token_idx, slot, None]).to(out.dtype))
        return out


def _fused_experts(module: nn.Module) -> bool:
    p = module._parameters
    return isinstance(p.get("gate_up_proj"), torch.Tensor) and isinstance(p.get("down_proj"), torch.Tensor)


def linearize_experts(layer: nn.Module) -> list[str]:
    """In place, on a (meta) decoder layer: each fused experts module becomes LinearExperts.
    Returns the replaced modules' names. 3-D parameters of any other layout stop the run."""
    replaced = []
    for name, mod in list(layer.named_modules()):
        if _fused_experts(mod):
            E, two_i, H = mod.gate_up_proj.shape
            if mod.down_proj.shape != (E, H, two_i // 2) or any(
                p is not None for n, p in mod._parameters.items() if n not in ("gate_up_proj", "down_proj")
            ):
                raise ModelStructureError(f"{name} ({type(mod).__name__}): an experts layout llmpress does not know "
                                          "(biases or unexpected shapes); compress this model with llm-compressor")
            with torch.device(mod.gate_up_proj.device):
                new = LinearExperts(E, H, two_i // 2, mod.act_fn)
            parent, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, child, new)
            replaced.append(name)
    for name, p in layer.named_parameters():
        if p.ndim > 2:
            raise ModelStructureError(f"{name}: a {p.ndim}-D parameter {tuple(p.shape)} in a decoder layer; llmpress "
                                      "quantizes Linear layers and per-expert gate/up/down experts only")
    return replaced


def calibrate_all_experts(layer: nn.Module, on: bool) -> None:
    """Turn calibrate-all on (and restart the routed-token counts) or off."""
    for m in layer.modules():
        if isinstance(m, LinearExperts):
            m.calibrate_all = on
            if on:
                m.routed_tokens.zero_()


def unrouted_experts(layer: nn.Module) -> dict[str, list[int]]:
    """Per experts module: the experts the router chose for no calibration token."""
    return {n: torch.nonzero(m.routed_tokens == 0).flatten().tolist()
            for n, m in layer.named_modules() if isinstance(m, LinearExperts) and (m.routed_tokens == 0).any()}
