"""How much the model's next-token distribution cares about each Linear's output: the mean diagonal of the
output Fisher, for `--budget`'s sensitivities (budget.py).

For logits z and a small change δz, KL(p || p') ≈ ½ δzᵀ F_z δz with F_z the Fisher of the softmax. An error e in
one Linear's output y moves the logits by J e (J = ∂z/∂y), so the KL it causes is ≈ ½ eᵀ (Jᵀ F_z J) e, and
Jᵀ F_z J = E_{y~p}[g gᵀ] with g = ∂ log p(y) / ∂y: the true Fisher pulled back to that Linear's output, estimated
here with labels sampled from the float model itself (not the data's, which would give the empirical Fisher).
Its diagonal, averaged over the output channels and tokens (F̄), turns a unit's local error Σ_t ||ΔW x_t||²
(budget.output_error, up to the 2/n) into a predicted KL contribution, F̄ · error / 2, assuming the error spreads
over the channels evenly and ignoring their correlations. One forward and backward of the whole float model per
sample (no weight gradients are kept), so it runs where the model fits in memory (`fits`).
"""
from __future__ import annotations

from pathlib import Path

import psutil
import torch
from torch import nn
from tqdm.auto import tqdm

FISHER_SAMPLES = 8  # calibration samples for the pass (8 x 512 tokens: the setting measured on the default model)


def fisher_bytes(n_params: int, tokens: int, hidden: int, layers: int, vocab: int) -> int:
    """Memory the pass needs: float32 weights, plus what autograd keeps for one sample's backward
    (about 40 activations of [tokens, hidden] a layer) and the float32 logits and their gradient."""
    return 4 * n_params + 4 * tokens * (40 * hidden * layers + 3 * vocab)


def fits(config, n_params: int, tokens: int) -> tuple[bool, int]:
    """(whether the pass fits in 80% of the memory available now, the bytes it needs)."""
    need = fisher_bytes(n_params, tokens, config.hidden_size, config.num_hidden_layers, config.vocab_size)
    return need <= 0.8 * psutil.virtual_memory().available, need


def budget_fisher(src: Path, config, ckpt_bytes: int, samples: list[torch.Tensor], prefix: str, seed: int,
                  progress: bool, log) -> dict[str, float] | None:
    """output_fisher over the first FISHER_SAMPLES calibration samples where the pass fits (parameters counted
    as the checkpoint's bytes / 2: exact for bf16 / fp16, cautious for float32); None, said in one line, where not."""
    samples = samples[:FISHER_SAMPLES]
    ok, need = fits(config, ckpt_bytes // 2, max(s.shape[-1] for s in samples))
    if not ok:
        log(f"budget: the output-Fisher pass needs {need / 1e9:.1f} GB (the float32 model and one sample's backward), "
            f"more than 80% of the {psutil.virtual_memory().available / 1e9:.1f} GB available: each unit's "
            "sensitivity is its local output error alone")
        return None
    return output_fisher(src, samples, prefix, seed, progress)


def output_fisher(src: Path, samples: list[torch.Tensor], prefix: str, seed: int,
                  progress: bool = True) -> dict[str, float]:
    """{Linear name: F̄} for every Linear under `prefix` (the decoder layers' module path), over `samples`
    ([1, T] token ids each), labels drawn from the model's own next-token distribution with `seed`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)  # trust_remote_code stays off
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def f(_mod, _grad_in, grad_out):
            g = grad_out[0].detach()  # [1, T, out_features]
            sums[name] = sums.get(name, 0.0) + float(g.double().pow(2).sum())
            counts[name] = counts.get(name, 0) + g.numel()
        return f

    handles = [m.register_full_backward_hook(hook(n)) for n, m in model.named_modules()
               if n.startswith(prefix + ".") and isinstance(m, nn.Linear)]
    gen = torch.Generator().manual_seed(seed)
    try:
        for ids in tqdm(samples, desc="budget: output Fisher", disable=not progress, unit="sample"):
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # gradients reach layer 0
            logits = model(inputs_embeds=embeds).logits[0].float()  # [T, vocab]
            labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen)[:, 0]
            nn.functional.cross_entropy(logits, labels, reduction="sum").backward()
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / counts[n] for n in sums}
