"""Shared fixtures: tiny random Llama checkpoints (bf16 safetensors + the default
model's tokenizer and chat template) and the real default model."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# Without a GPU, the Triton kernels' tests run them under Triton's interpreter. TRITON_INTERPRET is read when a
# function is decorated, triton's own library functions included, so it must be set before anything (transformers'
# integrations do) imports triton: here, the first file pytest loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def default_model() -> Path:
    from llmpress.models import default_model_dir

    return default_model_dir()


def make_tiny_llama(folder: Path, tokenizer_src: Path, **overrides) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=49152, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    cfg.update(overrides)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.bfloat16)
    with torch.no_grad():  # give layers the spread of real weights, and a few outlier input channels
        for name, p in model.named_parameters():
            if "layers" in name and p.ndim == 2:
                p.normal_(0, 0.05)
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_src / f).exists():
            shutil.copy(tokenizer_src / f, folder / f)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, default_model) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model)


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory) -> Path:
    """A small chat-format JSONL so tests do not parse the 125 MB ShareGPT dump."""
    import json

    p = tmp_path_factory.mktemp("calib") / "chats.jsonl"
    rows = []
    for i in range(24):
        rows.append({"messages": [
            {"role": "user", "content": f"Question {i}: explain why the sky looks blue at noon and red at sunset, with numbers."},
            {"role": "assistant", "content": "Rayleigh scattering goes as 1/wavelength^4, so blue light scatters about "
             f"{5 + i % 3} times more than red; at sunset light crosses more air and the blue is scattered away. " * 3},
        ]})
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


# Tiny random decoders of other architectures, from transformers' own config classes: two layers,
# hidden 64, both attention kinds where the architecture mixes them (Gemma 3), a sliding window of
# 8 so that it binds on calibration-length sequences.
TINY_ARCHS = {
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=16, query_pre_attn_scalar=16, sliding_window=8, final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention"])),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(pad_token_id=2)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(pad_token_id=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=8, head_dim=16)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1,
        mlp_only_layers=[], norm_topk_prob=True)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(head_dim=16)),
}


def make_tiny_model(arch: str, folder: Path, tokenizer_src: Path, add_bos: bool = False, **overrides) -> Path:
    """A random `arch` model (bf16 safetensors) with the default model's tokenizer; with add_bos the
    tokenizer prepends BOS, as Gemma's does."""
    import json

    import transformers

    config_cls, model_cls, extra = TINY_ARCHS[arch]
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=49152, max_position_embeddings=1024, tie_word_embeddings=True,
               bos_token_id=1, eos_token_id=2)
    cfg.update(extra)
    cfg.update(overrides)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**cfg)).to(torch.bfloat16)
    with torch.no_grad():  # the spread of real weights (random init's 0.02 leaves layers near identity)
        for name, p in model.named_parameters():
            if "layers" in name and p.ndim >= 2:
                p.normal_(0, 0.08)
        # peaked next-token distributions (logit spread ~4), so that KL and top-1 agreement measure something
        model.get_input_embeddings().weight.normal_(0, 0.5)
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_src / f).exists():
            shutil.copy(tokenizer_src / f, folder / f)
    if add_bos:  # a post-processor that prepends token 1, as Gemma's tokenizer.json has
        tok = json.loads((folder / "tokenizer.json").read_text())
        bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
        seq = lambda s: {"Sequence": {"id": s, "type_id": 0}}  # noqa: E731
        special = {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}
        tok["post_processor"] = {"type": "TemplateProcessing", "single": [bos, seq("A")],
                                 "pair": [bos, seq("A"), bos, seq("B")], "special_tokens": special}
        (folder / "tokenizer.json").write_text(json.dumps(tok))
        tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
        tok_cfg.update(add_bos_token=True, bos_token="<|im_start|>")
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return folder


@pytest.fixture(scope="session")
def make_tiny():
    """make_tiny_model, for test folders whose own conftest shadows this module's name."""
    return make_tiny_model
