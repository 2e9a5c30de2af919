"""The card model's shape as an engine Model with random weights, made on any device (benchmarks/gpu_card.py):
synth's recipe (N(0, gain²/cols) with a lognormal row spread) generated where it runs, linears quantized
round-to-nearest through the checkpoint format, so a GPU run needs no checkpoint on disk."""
from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from llmpress.checkpoint.compressed_tensors import compress_linear
from llmpress.compress.fp8 import fp8_quantize_weight
from llmpress.compress.gptq import rtn_quantize
from llmpress.engine import linear
from llmpress.engine.model import Layer, Model, ModelConfig
from llmpress.quant import SCHEMES


def gen_linear(rows: int, cols: int, gain: float, g: torch.Generator) -> torch.Tensor:
    """N(0, gain²/cols) with a lognormal row spread, bf16 on g's device (synth's recipe, made there)."""
    w = torch.randn(rows, cols, device=g.device, generator=g, dtype=torch.float32).mul_(gain / math.sqrt(cols))
    w.mul_(torch.exp(0.3 * torch.randn(rows, 1, device=g.device, generator=g)))
    return w.to(torch.bfloat16)


def quantized(w: torch.Tensor, scheme: str):
    """A bf16 [N, K] weight -> the engine's weight container for `scheme`, through the checkpoint format."""
    if scheme == "bf16":
        return linear.DenseWeight(w)
    s = SCHEMES[scheme]
    if scheme == "FP8_DYNAMIC":
        q, scale = fp8_quantize_weight(w.float())
        tensors = compress_linear(q, scale, None, s)
    else:
        s = s.with_group_size(128)
        r = rtn_quantize(w.float(), replace(s.weights, observer="minmax"))
        tensors = compress_linear(r.q, r.scale, r.zero_point, s)
    return linear.make_weight(tensors, s.weights, s.input_activations)


def build_model(hf: dict, scheme: str, layers: int, device: str, seed: int = 0) -> Model:
    """The card model's shape with random weights, all on `device`, linears in `scheme`."""
    cfg = ModelConfig.from_hf({**hf, "num_hidden_layers": layers})
    g = torch.Generator(device=device).manual_seed(seed)
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * d
    out = []
    for n in range(layers):
        gain = 0.75 + 0.5 * n / max(layers - 1, 1)
        norm = torch.ones(h, device=device, dtype=torch.bfloat16)
        w = {"input_layernorm": norm, "post_attention_layernorm": norm.clone(),
             "qkv": quantized(gen_linear(qkv_rows, h, gain, g), scheme),
             "o_proj": quantized(gen_linear(h, h, gain / math.sqrt(2 * layers), g), scheme),
             "gate_up": quantized(gen_linear(2 * i, h, gain, g), scheme),
             "down_proj": quantized(gen_linear(h, i, gain / math.sqrt(2 * layers), g), scheme)}
        out.append(Layer(cfg, w))
    embed = (0.02 * torch.randn(cfg.vocab_size, h, device=device, generator=g)).to(torch.bfloat16)
    lm_head = linear.DenseWeight(gen_linear(cfg.vocab_size, h, 1.0, g))  # the cards keep lm_head in bf16
    return Model(cfg, embed, out, torch.ones(h, device=device, dtype=torch.bfloat16), lm_head, torch.bfloat16)


def tokenizer(vocab: int, bos: int, eos: int):
    from transformers import PreTrainedTokenizerFast

    from llmpress.synth.tokenizer import write_tokenizer

    folder = Path(tempfile.mkdtemp())
    write_tokenizer(folder, vocab, bos, eos, 4096)
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
