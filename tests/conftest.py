"""Shared fixtures: tiny random Llama checkpoints (bf16 safetensors + the default
model's tokenizer and chat template) and the real default model."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


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
