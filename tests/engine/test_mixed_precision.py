"""The engine on mixed-precision checkpoints (compress --budget): W4 and 8-bit pack-quantized config groups
and unquantized Linears in one folder, against transformers + compressed-tensors on the same checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from llmpress.compress import Recipe, compress
from llmpress.engine import LLM, SamplingParams, linear
from llmpress.engine.loader import load_model as engine_load_model
from llmpress.eval.perplexity import load_model


@pytest.fixture(scope="module")
def mixed(tiny_llama, calib_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-budget")
    return {b: compress(tiny_llama, Recipe(group_size=64, num_samples=8, max_seq_len=64, dataset=str(calib_file),
                                           budget=b, dtype="float32"), root / f"b{b}", progress=False)
            for b in (6.0, 12.0)}


@pytest.mark.parametrize("b", [6.0, 12.0])
def test_mixed_checkpoint_logits_and_greedy_equal_transformers(mixed, b, compare):
    out = mixed[b]
    choices = json.loads((out / "llmpress_compress.json").read_text())["budget"]["choices"]
    assert len(choices) >= 2, choices  # several precisions in one checkpoint
    engine_load_model(out)  # loads: 4-bit and 8-bit packed groups, unquantized Linears, fused where they agree
    ids = torch.randint(0, 49152, (1, 100), generator=torch.Generator().manual_seed(0))
    top1, gaps = compare(out, [ids])
    worst = gaps.max().item()
    assert top1 == 1.0 and worst < 5e-3, (top1, worst)
    hf = load_model(out)
    llm = LLM(str(out), kv_cache_memory_bytes=64 << 20)
    prompt = ids[0, :12].tolist()
    got = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0].token_ids
    with torch.no_grad():
        ref = hf.generate(ids[:, :12], max_new_tokens=16, min_new_tokens=16, do_sample=False)[0, 12:].tolist()
    assert got == ref


def test_pack_quantized_int8_weight_equals_int_quantized():
    """An 8-bit pack-quantized Linear (weight_packed int32, num_bits 8) runs as the int8 weight it unpacks to."""
    from llmpress.checkpoint.compressed_tensors import pack_int
    from llmpress.quant import QuantArgs

    g = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, (48, 96), generator=g, dtype=torch.int8)
    scale = (torch.rand(48, 1, generator=g) * 0.01 + 1e-3).to(torch.bfloat16)
    args = QuantArgs(8, "int", True, "channel")
    packed = linear.make_weight({"weight_packed": pack_int(q, 8), "weight_scale": scale,
                                 "weight_shape": torch.tensor([48, 96])}, args)
    plain = linear.make_weight({"weight": q, "weight_scale": scale}, args)
    x = torch.randn(5, 96, generator=g)
    torch.testing.assert_close(packed(x), plain(x), rtol=0, atol=0)
    ref = x @ (q.float() * scale.float()).T
    torch.testing.assert_close(packed(x), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="int8"):
        linear.make_weight({"weight_packed": pack_int(q, 8)[:, :-1], "weight_scale": scale,
                            "weight_shape": torch.tensor([48, 96])}, args)
