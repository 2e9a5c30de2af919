"""Perplexity on held text, and KL divergence / top-1 agreement of next-token
distributions against a base model, both models over the same tokens in one pass.

Text is tokenized once and cut into non-overlapping windows of `window` tokens,
each led by BOS where the tokenizer prepends one (the model was trained so; else the
first token of each window has no prediction). Default text: the Lee
news corpus shipped in gensim's test data (299 documents, ~60k words).

Checkpoints are read with transformers (+ compressed-tensors for quantized
ones), exactly as a user of those libraries would load them; W8A8 / FP8 models
then quantize activations per token at run time as vLLM does.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from ..corpus import TextError, held_text

def leading_bos(tokenizer) -> int | None:
    """The BOS id when the tokenizer itself prepends BOS to text (Gemma, Llama 3, Mistral do):
    those models were trained with it at the start of every sequence, and without it their
    first positions are out of distribution (Gemma's perplexity goes from ~10 to thousands)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def token_windows(tokenizer, text: str, window: int, max_tokens: int | None) -> list[torch.Tensor]:
    """Non-overlapping windows of at most `window` tokens over the text's first max_tokens tokens;
    each starts with BOS when the tokenizer prepends one (leading_bos), so every text token is
    predicted in context; otherwise the first token of each window has no prediction."""
    if window < 2:
        raise TextError(f"window {window}: give --window 2 or more (tokens per scored window)")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise TextError("the held text tokenizes to fewer than 2 tokens")
    bos = leading_bos(tokenizer)
    if bos is not None:
        step = window - 1
        return [torch.tensor([[bos] + ids[i : i + step]]) for i in range(0, len(ids), step)]
    return [torch.tensor([ids[i : i + window]]) for i in range(0, len(ids) - 1, window) if len(ids[i : i + window]) > 1]


def load_model(path: str | Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    kw = {}
    if _asymmetric_packed(Path(path)):
        # transformers' compressed execution allocates zero points [out, groups] but compressed-tensors stores
        # them packed [out/8, groups] (ours and llm-compressor's), so it refuses to load them; decompressing to
        # dense reads them right (each dequantized weight rounded to the scale's dtype, bf16 here)
        from transformers import CompressedTensorsConfig

        kw["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kw)
    return model.eval()


def _asymmetric_packed(path: Path) -> bool:
    """A compressed-tensors pack-quantized checkpoint with asymmetric weights (zero points)."""
    try:
        qc = json.loads((path / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return False
    groups = (qc.get("config_groups") or {}).values() if qc.get("quant_method") == "compressed-tensors" else ()
    return any(isinstance(g, dict) and (g.get("weights") or {}).get("symmetric") is False
               and (g.get("format") or qc.get("format")) == "pack-quantized" for g in groups)


@dataclass
class PplResult:
    model: str
    text: str
    tokens: int
    perplexity: float
    base: str | None = None
    base_perplexity: float | None = None
    kl_divergence: float | None = None  # mean over positions of KL(base || model), nats
    top1_agreement: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@torch.no_grad()
def perplexity(
    model_path: str | Path,
    base_path: str | Path | None = None,
    text_file: str | Path | None = None,
    window: int = 512,
    max_tokens: int | None = 16384,
    progress: bool = True,
) -> PplResult:
    from transformers import AutoTokenizer

    text, text_name = held_text(text_file)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    windows = token_windows(tokenizer, text, window, max_tokens)
    model = load_model(model_path)
    base = load_model(base_path) if base_path else None
    nll = base_nll = kl = agree = 0.0
    n = 0
    for ids in tqdm(windows, desc="ppl", disable=not progress, unit="window"):
        logp = F.log_softmax(model(ids).logits[0, :-1].float(), -1)  # [T-1, V]
        target = ids[0, 1:]
        nll += -logp.gather(1, target[:, None]).sum().item()
        if base is not None:
            blogp = F.log_softmax(base(ids).logits[0, :-1].float(), -1)
            kl += (blogp.exp() * (blogp - logp)).sum().item()
            agree += (blogp.argmax(-1) == logp.argmax(-1)).sum().item()
            base_nll += -blogp.gather(1, target[:, None]).sum().item()
        n += target.numel()
    res = PplResult(str(model_path), text_name, n, math.exp(nll / n))
    if base is not None:
        res.base = str(base_path)
        res.base_perplexity = math.exp(base_nll / n)
        res.kl_divergence = kl / n
        res.top1_agreement = agree / n
    return res
