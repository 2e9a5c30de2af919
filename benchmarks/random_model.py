"""A random-weight non-Llama model for the llm-compressor comparison (issue 22): no real
Qwen3 weights exist offline, so compare_llmcompressor.py builds one with `--model qwen3-random`.

    .venv/bin/python benchmarks/random_model.py qwen3-random out/compare/models/qwen3-random

Architecture and parameter names come from transformers' own Qwen3Config / Qwen3ForCausalLM
(hidden 512, 6 layers, MLP 1536, 8 query / 4 key-value heads of 64, q/k RMSNorms, untied
lm_head); the tokenizer and chat template are the default model's (vocab 49152), as
tests/conftest.py make_tiny_model does. Every tensor comes from llmpress.synth.weights.init_tensor
(fan-in scaled Linears with per-layer and per-row gains, residual writers scaled by depth,
RMSNorms ~1 with two 8-24x outlier channels in every layer's input norms), so GPTQ,
SmoothQuant and the activation scales see the spreads and outliers of a trained model rather
than uniform init. Qwen3's per-head q/k norms are [head_dim] and get the lognormal ~1 spread
without the hidden-size outlier channels. lm_head is scaled by LM_HEAD_GAIN so that the
next-token distributions are peaked (mean entropy printed by the builder), otherwise KL between
near-uniform distributions measures little.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

MODELS = {
    "qwen3-random": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
        num_key_value_heads=4, head_dim=64, vocab_size=49152, max_position_embeddings=2048,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2, rope_theta=1e6)),
}
LM_HEAD_GAIN = 4.0  # logit std ~1 -> ~4: peaked next-token distributions, as conftest's tiny models have
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def build(name: str, folder: Path, tokenizer_src: Path, seed: int = 0) -> Path:
    """Write model `name` (bf16 safetensors, config, the tokenizer of `tokenizer_src`) to `folder`."""
    import transformers

    from llmpress.synth.weights import InitConfig, init_tensor, tensor_seed

    config_cls, model_cls, kwargs = MODELS[name]
    config = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(config).to(torch.bfloat16)
    init = InitConfig(config.hidden_size, config.num_hidden_layers, config.initializer_range, seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("q_norm.weight", "k_norm.weight")):  # [head_dim]: ~1, no hidden-size outliers
                p.copy_(torch.exp(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(tensor_seed(seed, pname)))))
            else:
                p.copy_(init_tensor(pname, tuple(p.shape), p.dtype, init))
        model.lm_head.weight.mul_(LM_HEAD_GAIN)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for f in TOKENIZER_FILES:
        if (tokenizer_src / f).exists():
            shutil.copy(tokenizer_src / f, folder / f)
    (folder / "llmpress_random_model.json").write_text(json.dumps({"name": name, "seed": seed}) + "\n")
    return folder


def ensure(name: str, root: Path, tokenizer_src: Path) -> Path:
    """The folder of model `name` under `root`, built on first use."""
    folder = root / name
    if not (folder / "config.json").is_file():
        build(name, folder, tokenizer_src)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(MODELS))
    ap.add_argument("output", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmpress.models import default_model_dir

    out = build(a.name, a.output, default_model_dir(), a.seed)
    # what the distributions look like on real text: mean entropy (nats) and logit std
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tok("The committee met on Tuesday to discuss the budget for the coming year, and after a long debate "
              "the members agreed to fund the new library.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0]
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1).mean().item()
    print(json.dumps({"output": str(out), "mean_entropy_nats": round(entropy, 3), "logit_std": round(logits.std().item(), 3),
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
