"""Checkpoints written by llm-compressor 0.14 run in the engine with the logits
transformers + compressed-tensors give, and unsupported ones are refused clearly.

The checkpoints come from `benchmarks/llmcompressor_checkpoints.py` (llm-compressor
needs its own venv, so CI cannot make them); set LLMPRESS_LLMC_DIR to their folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from llmpress.engine.engine import EngineConfig, LLMEngine
from llmpress.engine.loader import UnsupportedCheckpoint

ROOT = Path(os.environ.get("LLMPRESS_LLMC_DIR", "out/llmc-ckpt"))
pytestmark = pytest.mark.skipif(
    not (ROOT / "W4A16-g64" / "config.json").is_file(),
    reason=f"no llm-compressor checkpoints in {ROOT}: run benchmarks/llmcompressor_checkpoints.py (needs its venv)",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["W4A16-g64", "W4A16_ASYM-g64", "W8A8", "FP8_DYNAMIC", "W4A16-g128-h256"])
def test_llmcompressor_checkpoint_logits_agree_with_transformers(name, lee_windows, compare):
    windows = lee_windows if "h256" not in name else [torch.randint(0, 49152, (1, 512), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    top1, worst = compare(ROOT / name, windows)
    print(f"llm-compressor {name}: top-1 {100 * top1:.2f}%, max|Δlogit| {worst:.2e}")
    # dynamic-activation schemes: see MIN_TOP1 in test_model.py (transformers fake-quantizes
    # activations over bf16-rounded weights; the engine runs the quantized math exactly)
    assert top1 >= {"W8A8": 0.92, "FP8_DYNAMIC": 0.90}.get(name, 0.99)


def test_group_actorder_with_g_idx_is_refused():
    with pytest.raises(UnsupportedCheckpoint, match="g_idx|actorder"):
        LLMEngine(EngineConfig(model=str(ROOT / "W4A16-g64-actorder-group"), kv_cache_memory_bytes=16 << 20))
