"""The engine on architectures beyond Llama (layout.LAYOUTS): Qwen3 (q/k norms), Gemma 3 (scaled
embeddings, (1 + w) and sandwich norms, gelu-tanh, q/k norms, local and global rope, a sliding-window
layer, logit soft-capping) and Mistral's sliding window, against transformers on tiny random models in
float32: logits position by position, greedy generation token for token past the window, and W4A16
checkpoints from `compress` against transformers + compressed-tensors. Architectures the engine
cannot run are refused in one line that names the way out."""
from __future__ import annotations

import pytest
import torch

from llmpress.cli import main
from llmpress.compress import Recipe, compress
from llmpress.engine import LLM, SamplingParams
from llmpress.engine.llm_engine import EngineConfig, LLMEngine
from llmpress.engine.model import AttnSegment, BatchMeta, ModelConfig, UnsupportedArchitecture

ARCHS = ["qwen3", "gemma3", "mistral"]  # the window of gemma3's first layer and of mistral is 8 tokens


def _hf(folder, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn).eval()


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 49152, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(arch, arch_models, compare):
    """40 tokens: the sliding window (8) binds in prefill; Gemma's final-logit soft-capping (30) moves its
    largest logits (~12) by ~0.6."""
    top1, gaps = compare(arch_models(arch), [_ids(40)])
    worst = gaps.max().item()
    assert top1 == 1.0 and worst < 1e-4, (arch, top1, worst)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_transformers(arch, arch_models):
    """Prompts of 5 + 20 generated tokens, batched: decode steps attend within the window once it binds."""
    folder = arch_models(arch)
    llm = LLM(str(folder), kv_cache_memory_bytes=32 << 20, block_size=4)
    prompts = [_ids(5, seed).flatten().tolist() for seed in (1, 2)]  # two sequences: batched decode rows
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)
    hf = _hf(folder)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False)
        assert out.outputs[0].token_ids == ref[0, len(prompt):].tolist(), arch
    assert len(set(outs[0].outputs[0].token_ids)) > 10  # a varied continuation, not one token repeated


def test_chunked_prefill_and_mixed_decode_equal_one_shot_prefill(arch_models, engine_logits):
    """Gemma 3 fed in chunks and single tokens through the paged cache (windowed layer included) gives the
    logits of one prefill."""
    engine = LLMEngine(EngineConfig(model=str(arch_models("gemma3")), kv_cache_memory_bytes=16 << 20, block_size=4))
    ids = _ids(37, 3).flatten()
    full = engine_logits(engine, ids)
    table: list[int] = []
    engine.blocks.grow(table, 37)
    rows, pos = [], 0
    for n in (5, 11, 1, 1, 8, 1, 10):
        p = list(range(pos, pos + n))
        meta = BatchMeta.build(p, [table[i // 4] * 4 + i % 4 for i in p], [AttnSegment(0, n, pos + n, table)])
        rows.append(engine.model.logits(engine.model.forward(ids[pos : pos + n], meta, engine.kv)))
        pos += n
    torch.testing.assert_close(torch.cat(rows), full, rtol=1e-4, atol=1e-4)


def test_gemma3_attention_softcapping_follows_transformers(tmp_path, build_arch_model, compare):
    """transformers' Gemma3Attention does not apply attn_logit_softcapping (Gemma 3 has q/k norms instead), in
    eager or SDPA attention; the engine, reading the same config, agrees with it."""
    folder = build_arch_model("gemma3", tmp_path / "capped", attn_logit_softcapping=2.0)
    top1, gaps = compare(folder, [_ids(20)])
    worst = gaps.max().item()
    assert top1 == 1.0 and worst < 1e-4, (top1, worst)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_w4a16_checkpoint_agrees_with_transformers(arch, arch_models, calib_file, tmp_path, compare):
    """A W4A16 checkpoint from compress: the engine's int4 kernels against transformers + compressed-tensors
    on the same stored codes (float32 both)."""
    recipe = Recipe(scheme="W4A16", group_size=32, num_samples=4, max_seq_len=48, dataset=str(calib_file),
                    observer="minmax", dtype="float32")
    folder = compress(arch_models(arch), recipe, tmp_path / arch, progress=False)
    top1, gaps = compare(folder, [_ids(40)])
    worst = gaps.max().item()
    assert top1 == 1.0 and worst < 1e-3, (arch, top1, worst)


def test_unsupported_architecture_names_the_way_out(tmp_path, make_tiny, default_model, capsys):
    folder = make_tiny("phi3", tmp_path / "phi3", default_model)
    with pytest.raises(UnsupportedArchitecture, match="Phi3ForCausalLM.*--engine vllm.*transformers"):
        LLM(str(folder))
    assert main(["generate", str(folder), "Hello", "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err  # (transformers' save progress bar may come first)
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("llmpress generate: error: architecture 'Phi3ForCausalLM'"), err
    assert "--engine vllm" in line and "--backend vllm" in line, line


def test_layer_windows_follow_transformers():
    """Each layer's window as transformers assigns it, for the config spellings the engine meets."""
    base = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=4, num_attention_heads=2)
    cfg = lambda arch, **kw: ModelConfig.from_hf({**base, "architectures": [arch], **kw})  # noqa: E731
    assert cfg("MistralForCausalLM", sliding_window=16).layer_windows == (16,) * 4
    assert cfg("Qwen2ForCausalLM", sliding_window=16).layer_windows == (None,) * 4  # use_sliding_window off
    assert cfg("Qwen2ForCausalLM", sliding_window=16, use_sliding_window=True,
               max_window_layers=2).layer_windows == (None, None, 16, 16)
    gemma = cfg("Gemma3ForCausalLM", sliding_window=16, sliding_window_pattern=2, rope_theta=1e6,
                rope_local_base_freq=1e4, hidden_activation="gelu_pytorch_tanh")  # transformers 4's spelling
    assert gemma.layer_windows == (16, None, 16, None) and (gemma.rope_theta, gemma.local_rope_theta) == (1e6, 1e4)
    assert gemma.local_rope(0) and not gemma.local_rope(1)
    typed = cfg("Gemma3ForCausalLM", sliding_window=16, hidden_activation="gelu_pytorch_tanh",
                layer_types=["full_attention", "sliding_attention"] * 2,
                rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    assert typed.layer_windows == (None, 16, None, 16) and typed.rope_scaling["factor"] == 8.0
    assert typed.local_rope_scaling is None and typed.embed_scale == 8 ** 0.5
    with pytest.raises(UnsupportedArchitecture, match="hidden_act 'gelu'"):
        cfg("Qwen3ForCausalLM", hidden_act="gelu")
