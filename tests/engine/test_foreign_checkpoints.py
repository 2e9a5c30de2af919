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

from llmpress.engine.llm_engine import EngineConfig, LLMEngine
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
    top1, gaps = compare(ROOT / name, windows)
    worst = gaps.max().item()
    print(f"llm-compressor {name}: top-1 {100 * top1:.2f}%, max|Δlogit| {worst:.2e}")
    # dynamic-activation schemes: see MIN_TOP1 in test_model.py (transformers fake-quantizes
    # activations over bf16-rounded weights; the engine runs the quantized math exactly)
    assert top1 >= {"W8A8": 0.92, "FP8_DYNAMIC": 0.90}.get(name, 0.99)


def test_group_actorder_with_g_idx_is_refused(tmp_path):
    """Older llm-compressor versions wrote act-order "group" checkpoints: weight_g_idx int32
    [in_features] beside each quantized weight and actorder: group in the config (0.14 refuses
    to make them). The W4A16 checkpoint, given both, must be refused by name, not run wrongly."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    dst = tmp_path / "W4A16-g64-actorder-group"
    shutil.copytree(ROOT / "W4A16-g64", dst)
    cfg = json.loads((dst / "config.json").read_text())
    for group in cfg["quantization_config"]["config_groups"].values():
        group["weights"]["actorder"] = "group"
    (dst / "config.json").write_text(json.dumps(cfg))
    shard = next(dst.glob("*.safetensors"))
    tensors = load_file(shard)
    for name in [n for n in tensors if n.endswith(".weight_packed")]:
        k = int(tensors[name.replace("weight_packed", "weight_shape")][1])
        tensors[name.replace("weight_packed", "weight_g_idx")] = (torch.arange(k, dtype=torch.int32) // 64).flip(0)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(UnsupportedCheckpoint, match="g_idx|actorder"):
        LLMEngine(EngineConfig(model=str(dst), kv_cache_memory_bytes=16 << 20))
