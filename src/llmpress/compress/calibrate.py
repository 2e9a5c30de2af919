"""Layer-wise calibration without tracing.

1. `capture_layer_inputs`: run the embeddings of each calibration sample and stop
   at the first decoder layer's pre-hook, keeping its positional input (the
   hidden states) and keyword inputs (position embeddings, masks).
2. `InputStats`: forward pre-hooks on a layer's target Linears that accumulate,
   per distinct input tensor, the GPTQ Hessian Σ x xᵀ and SmoothQuant's
   per-channel max |x|. Linears that read the same tensor (q/k/v; gate/up)
   share one accumulator, so the O(n·C²) Hessian work is done once.
3. `run_layer`: the layer over every sample (to collect stats, or to propagate
   the quantized layer's outputs to the next layer).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .gptq import HessianAccumulator


def _cpu_has_bf16_units() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return True  # unknown platform: let the measurement decide
    return " avx512_bf16" in flags or " amx_bf16" in flags


def fastest_cpu_dtype() -> torch.dtype:
    """float32 or bfloat16, whichever multiplies faster on this CPU: with AVX512-BF16 / AMX
    bf16 is 4-5x faster; on AVX2-only CPUs it is several times slower, so those skip the
    measurement. bf16 must win clearly (1.5x, best of 3 interleaved trials, so a busy
    machine cannot flip the choice) to be worth its precision loss. ~50 ms."""
    if not _cpu_has_bf16_units():
        return torch.float32
    a = torch.randn(256, 1024)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(3):
        for dt in best:
            x, w = a.to(dt), a.T.contiguous().to(dt)
            x @ w  # warm-up
            t = time.perf_counter()
            for _ in range(3):
                x @ w
            best[dt] = min(best[dt], time.perf_counter() - t)
    return torch.bfloat16 if best[torch.bfloat16] * 1.5 < best[torch.float32] else torch.float32


class _Captured(Exception):
    pass


_DROP_KWARGS = ("past_key_values", "past_key_value", "use_cache", "cache_position")


def capture_layer_inputs(
    decoder: nn.Module, first_layer: nn.Module, samples: list[torch.Tensor], device: torch.device
) -> list[tuple[torch.Tensor, dict]]:
    """Per sample: (hidden_states [1, T, hidden], kwargs) as the first decoder layer receives them."""
    captured: list[tuple[torch.Tensor, dict]] = []

    def hook(_mod, args, kwargs):
        h = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in _DROP_KWARGS}
        captured.append((h.detach(), kw))
        raise _Captured

    handle = first_layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in samples:
                try:
                    decoder(input_ids=ids.to(device), use_cache=False)
                except _Captured:
                    pass
    finally:
        handle.remove()
    if len(captured) != len(samples):
        raise RuntimeError("capturing the first decoder layer's inputs failed: its pre-hook did not fire")
    return captured


def run_layer(layer: nn.Module, inputs: list[tuple[torch.Tensor, dict]], before_each=None) -> list[torch.Tensor]:
    """The layer's output hidden states for every sample."""
    outs = []
    with torch.no_grad():
        for h, kw in inputs:
            if before_each is not None:
                before_each()
            out = layer(h, **kw)
            outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


class InputStats:
    """Hessian sums and per-channel |x| maxima of the inputs of a layer's target Linears."""

    def __init__(self, linears: dict[str, nn.Linear], hessian: bool = True, act_max: bool = False):
        self.owner: dict[str, str] = {}  # Linear name -> the name whose accumulator it shares
        self.hessians: dict[str, HessianAccumulator] = {}
        self.act_max: dict[str, torch.Tensor] = {}
        self._want_h, self._want_a = hessian, act_max
        # tensors stay referenced for the sample so their ids cannot be reused within it
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in linears.items()]

    def new_sample(self) -> None:
        self._seen.clear()

    def _hook(self, name: str):
        def hook(_mod, args):
            x = args[0]
            seen = self._seen.get(id(x))
            if seen is not None and seen[0] is x:
                self.owner.setdefault(name, seen[1])
                return
            self._seen[id(x)] = (x, name)
            self.owner.setdefault(name, name)
            flat = x.detach().reshape(-1, x.shape[-1])
            if self._want_h:
                acc = self.hessians.get(name)
                if acc is None:
                    acc = self.hessians[name] = HessianAccumulator(x.shape[-1], x.device)
                acc.add(flat)
            if self._want_a:
                m = flat.abs().amax(0).float()
                prev = self.act_max.get(name)
                self.act_max[name] = m if prev is None else torch.maximum(prev, m)

        return hook

    def hessian(self, name: str) -> torch.Tensor:
        return self.hessians[self.owner[name]].hessian()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._seen.clear()
