"""Layer-wise calibration without tracing.

1. `capture_decoder_inputs`: the decoder's own forward over each calibration sample
   with every layer swapped for a recorder, keeping the first layer's hidden states
   and every layer's keyword inputs (position embeddings, masks, per-layer kwargs).
2. `InputStats`: forward pre-hooks on a layer's target Linears that accumulate,
   per distinct input tensor, the GPTQ Hessian Σ x xᵀ, SmoothQuant's
   per-channel max |x| and AWQ's per-channel mean |x|. Linears that read the same tensor (q/k/v; gate/up)
   share one accumulator, so the O(n·C²) Hessian work is done once.
3. `run_layer`: the layer over every sample (to collect stats, or to propagate
   the quantized layer's outputs to the next layer).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .gptq import HessianAccumulator
from .targets import ModelStructureError


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


class CalibrationError(ModelStructureError):
    """Calibration that would silently produce a wrong model (a Linear that saw no tokens)."""


_DROP_KWARGS = ("past_key_values", "past_key_value", "cache", "use_cache", "cache_position")


@dataclass
class DecoderInputs:
    """What every decoder layer receives, per calibration sample.

    hidden: the current layer's input hidden states, per sample [1, T, hidden] (the first
    layer's after capture; replaced by each layer's outputs as calibration walks the stack).
    kwargs[i][s]: layer i's keyword inputs for sample s exactly as the decoder passed them:
    models mix layer kinds (Gemma 3: sliding-window and global attention with their own masks
    and rotary tables), so one layer's kwargs are not another's. Tensors shared between layers
    (a mask, a rotary table) are held once."""

    hidden: list[torch.Tensor]
    kwargs: list[list[dict]]
    float_hidden: list[torch.Tensor] | None = None  # the float model's, for the same layer (recipe float_target)

    def layer(self, i: int) -> list[tuple[torch.Tensor, dict]]:
        return list(zip(self.hidden, self.kwargs[i]))

    def float_layer(self, i: int) -> list[tuple[torch.Tensor, dict]] | None:
        return None if self.float_hidden is None else list(zip(self.float_hidden, self.kwargs[i]))


def calibration_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype calibration forwards run in; GPTQ itself always works in float32."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
    return torch.bfloat16 if device.type == "cuda" else fastest_cpu_dtype()


def calibration_inputs(src, skeleton, layers, recipe, ckpt, device: torch.device, dtype: torch.dtype,
                       log: Callable[[str], None] = print) -> tuple[DecoderInputs, list[torch.Tensor]]:
    """Every layer's calibration inputs from the decoder's own forward (capture_decoder_inputs), and the samples'
    token ids: `recipe`'s dataset, sample count and length; the decoder's parameters outside the layers
    (embeddings, final norm) are loaded from `ckpt` into `skeleton` for the pass and dropped after it."""
    from transformers import AutoTokenizer

    from .dataset import calibration_samples
    from .skeleton import materialize

    tokenizer = AutoTokenizer.from_pretrained(src)
    samples = calibration_samples(recipe.dataset, tokenizer, recipe.num_samples, recipe.max_seq_len, recipe.seed,
                                  log=log)
    decoder = skeleton.get_decoder()
    decoder_prefix = next(n for n, m in skeleton.named_modules() if m is decoder)
    outside = [(n, m) for n, m in decoder.named_children() if m is not layers]
    for name, mod in outside:
        materialize(mod, f"{decoder_prefix}.{name}" if decoder_prefix else name, ckpt, device, dtype)
    for name, b in decoder._buffers.items():  # computed tables registered on the decoder itself
        if b is not None:
            decoder._buffers[name] = b.to(device)
    inputs = capture_decoder_inputs(decoder, layers, samples, device)
    for _, mod in outside:
        mod.to("meta")
    ntok = sum(s.shape[1] for s in samples)
    log(f"calibration: {len(samples)} samples, {ntok} tokens from {recipe.dataset}, forward in {str(dtype).removeprefix('torch.')}")
    inputs.hidden = [h.to(dtype) for h in inputs.hidden]
    return inputs, samples


def capture_decoder_inputs(
    decoder: nn.Module, layers: nn.ModuleList, samples: list[torch.Tensor], device: torch.device
) -> DecoderInputs:
    """Run the decoder's own forward once per sample with every layer replaced by a recorder
    that keeps its inputs and hands its hidden states on unchanged: the embeddings (and their
    scaling), masks, rotary tables and any per-layer kwargs come from the model's own code, and
    no layer weights are needed. The recorder is an instance attribute set for the duration
    of the pass only."""
    hidden: list[torch.Tensor] = []
    kwargs: list[list[dict]] = [[] for _ in layers]

    def recorder(i: int):
        def forward(*args, **kw):
            h = args[0] if args else kw.pop("hidden_states")
            if i == 0:
                hidden.append(h.detach())
            elif h.shape != hidden[-1].shape:
                raise ModelStructureError(
                    f"{type(decoder).__name__}: layer {i} received hidden states of shape {tuple(h.shape)}, "
                    f"layer 0 {tuple(hidden[-1].shape)}; this decoder loop is not supported"
                )
            kwargs[i].append({k: v for k, v in kw.items() if k not in _DROP_KWARGS})
            return h

        return forward

    for i, layer in enumerate(layers):
        layer.forward = recorder(i)
    try:
        with torch.no_grad():
            for ids in samples:
                decoder(input_ids=ids.to(device), use_cache=False)
    finally:
        for layer in layers:
            del layer.forward
    for i, kw in enumerate(kwargs):
        if len(kw) != len(samples):
            raise ModelStructureError(
                f"{type(decoder).__name__}: decoder layer {i} was called {len(kw)} times for {len(samples)} samples; "
                "llmpress calibrates decoders that call each layer once per forward"
            )
    return DecoderInputs(hidden, kwargs)


def capture_layer_inputs(
    decoder: nn.Module, first_layer: nn.Module, samples: list[torch.Tensor], device: torch.device
) -> list[tuple[torch.Tensor, dict]]:
    """Per sample: (hidden_states [1, T, hidden], kwargs) as the first decoder layer receives them."""
    layers = next(m for m in decoder.modules() if isinstance(m, nn.ModuleList) and first_layer in list(m))
    return capture_decoder_inputs(decoder, layers, samples, device).layer(0)


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
    """Hessian sums and per-channel |x| maxima of the inputs of a layer's target Linears,
    the number of tokens each Linear saw, and which of the `sources` modules (candidate
    SmoothQuant norms) produced each Linear's input, by tensor identity."""

    def __init__(
        self,
        linears: dict[str, nn.Linear],
        hessian: bool = True,
        act_max: bool = False,
        sources: dict[str, nn.Module] | None = None,
        act_mean: bool = False,
    ):
        self.owner: dict[str, str] = {}  # Linear name -> the name whose accumulator it shares
        self.hessians: dict[str, HessianAccumulator] = {}
        self.act_max: dict[str, torch.Tensor] = {}
        self.abs_sum: dict[str, torch.Tensor] = {}  # Σ |x| per channel (AWQ's x̄ = abs_sum / rows)
        self.rows: dict[str, int] = {}
        self.tokens: dict[str, int] = dict.fromkeys(linears, 0)
        self.fed_by: dict[str, set[str]] = {n: set() for n in linears}  # Linear -> source modules of its input
        self._want_h, self._want_a, self._want_mean = hessian, act_max, act_mean
        # tensors stay referenced for the sample so their ids cannot be reused within it
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}
        self._produced: dict[int, tuple[torch.Tensor, str]] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(n)) for n, m in linears.items()]
        for n, m in (sources or {}).items():
            self._handles.append(m.register_forward_hook(self._source_hook(n)))

    def new_sample(self) -> None:
        self._seen.clear()
        self._produced.clear()

    def _source_hook(self, name: str):
        def hook(_mod, _args, out):
            if isinstance(out, torch.Tensor):
                self._produced[id(out)] = (out, name)

        return hook

    def _hook(self, name: str):
        def hook(_mod, args):
            x = args[0]
            src = self._produced.get(id(x))
            self.fed_by[name].add(src[1] if src is not None and src[0] is x else "")
            self.tokens[name] += x.numel() // x.shape[-1]
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
            if self._want_mean:
                a = flat.abs().float().sum(0)
                prev = self.abs_sum.get(name)
                self.abs_sum[name] = a if prev is None else prev + a
                self.rows[name] = self.rows.get(name, 0) + flat.shape[0]

        return hook

    def act_mean(self, name: str) -> torch.Tensor:
        """x̄ [C]: mean |x| per input channel of the Linear `name` over every token it read."""
        owner = self.owner[name]
        return self.abs_sum[owner] / max(self.rows[owner], 1)

    def starved(self) -> list[str]:
        """The Linears that saw no calibration token."""
        return [n for n, t in self.tokens.items() if t == 0]

    def hessian(self, name: str) -> torch.Tensor:
        return self.hessians[self.owner[name]].hessian()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._seen.clear()
        self._produced.clear()
