"""Synth fixtures: the card's 8B config with its vocabulary cut to 16k (every other shape real),
and a small Llama config for the cheap checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmpress.synth import load_config


def write_config(folder: Path, **overrides) -> Path:
    cfg, _ = load_config("deepseek-r1-distill-llama-8b")
    cfg.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder / "config.json"


@pytest.fixture(scope="session")
def cut_8b_config(tmp_path_factory) -> Path:
    """8B shape (hidden 4096, MLP 14336, 32/8 heads, llama3 rope), vocab 16384 with Llama 3's
    layout (bos / eos at the start of a 256-id special block)."""
    return write_config(tmp_path_factory.mktemp("cfg8b"), vocab_size=16384, bos_token_id=16128, eos_token_id=16129)


@pytest.fixture(scope="session")
def small_config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("cfgsmall"), hidden_size=256, intermediate_size=768,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_hidden_layers=4,
                        vocab_size=4096, bos_token_id=3840, eos_token_id=3841)


@pytest.fixture(scope="session")
def synth_8b_2layers(cut_8b_config, tmp_path_factory) -> Path:
    from llmpress.synth import synth

    return synth(str(cut_8b_config), tmp_path_factory.mktemp("s8b") / "m", layers=2, progress=False)
