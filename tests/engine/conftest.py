"""Engine test helpers: logits of the engine vs transformers on the same checkpoint,
the Lee-corpus windows they are compared on, and quantized default-model checkpoints."""
from __future__ import annotations

import pytest
import torch

from llmpress.compress import Recipe, compress
from llmpress.engine.llm_engine import EngineConfig, LLMEngine
from llmpress.corpus import held_text
from llmpress.eval.perplexity import load_model, token_windows


def _engine_logits(engine: LLMEngine, ids: torch.Tensor) -> torch.Tensor:
    """Logits at every position of one sequence, prefilled in one chunk: [T, V]."""
    return engine.prompt_logits(ids.flatten().tolist())


def _transformers_model(folder):
    """transformers + compressed-tensors reading the folder: its compressed-execution path
    (float32 math on the stored codes) where it loads; for asymmetric int4 that path
    refuses packed zero points (llm-compressor's too), so decompress to dense instead,
    which rounds each dequantized weight to the scale's dtype (bf16)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    try:
        return load_model(folder), False
    except RuntimeError:
        return AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, quantization_config=CompressedTensorsConfig(run_compressed=False)
        ).eval(), True


def _compare(folder, windows, **engine_kwargs) -> tuple[float, torch.Tensor]:
    """(top-1 agreement, max |Δlogit| at each position: [positions]) of the engine vs
    transformers over the windows."""
    engine = LLMEngine(EngineConfig(model=str(folder), kv_cache_memory_bytes=256 << 20, **engine_kwargs))
    hf, _ = _transformers_model(folder)
    agree = total = 0
    gaps = []
    with torch.no_grad():
        for w in windows:
            ref = hf(w).logits[0].float()
            ours = _engine_logits(engine, w[0])
            agree += (ref.argmax(-1) == ours.argmax(-1)).sum().item()
            total += ref.shape[0]
            gaps.append((ref - ours).abs().amax(-1))
    return agree / total, torch.cat(gaps)



def _noise_floor(folder, windows, rel: float = 1e-6) -> tuple[float, torch.Tensor]:
    """(top-1 agreement, max |Δlogit| at each position) of transformers with itself when its input embeddings
    move by `rel` relative noise, float32 rounding's size. Dense and weight-only models stay
    at 100%; with per-token activation quantization a tiny change flips some rounding
    decisions and the flips cascade through the layers, so no second implementation can
    agree with transformers better than transformers agrees with itself."""
    hf, _ = _transformers_model(folder)
    emb = hf.get_input_embeddings()
    g = torch.Generator().manual_seed(0)
    agree = total = 0
    gaps = []
    with torch.no_grad():
        for w in windows:
            e = emb(w)
            a = hf(inputs_embeds=e).logits[0]
            b = hf(inputs_embeds=e * (1 + rel * torch.randn(e.shape, generator=g))).logits[0]
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
            total += a.shape[0]
            gaps.append((a - b).abs().amax(-1))
    return agree / total, torch.cat(gaps)


@pytest.fixture(scope="session")
def transformers_model():
    return _transformers_model


@pytest.fixture(scope="session")
def noise_floor():
    return _noise_floor


@pytest.fixture(scope="session")
def engine_logits():
    return _engine_logits


@pytest.fixture(scope="session")
def compare():
    return _compare


@pytest.fixture(scope="session")
def lee_windows(default_model):
    from transformers import AutoTokenizer

    text, _ = held_text()
    return token_windows(AutoTokenizer.from_pretrained(default_model), text, 512, 2048 + 1)


@pytest.fixture(scope="session")
def default_checkpoints(tmp_path_factory, default_model, calib_file):
    root = tmp_path_factory.mktemp("engine-ckpt")
    out = {}
    for scheme, group in [("W4A16", 64), ("W4A16_ASYM", 64), ("W8A8", None), ("FP8_DYNAMIC", None)]:
        # The engine must reproduce whatever the checkpoint holds, so a cheap calibration does:
        # 8 short samples and min-max ranges keep this fixture to seconds.
        recipe = Recipe(scheme=scheme, group_size=group, num_samples=8, max_seq_len=128, dataset=str(calib_file),
                        observer="minmax", dtype="float32")
        out[scheme] = compress(default_model, recipe, root / scheme, progress=False)
    return out





@pytest.fixture(scope="session")
def build_arch_model(make_tiny, default_model):
    """build(arch, folder, **config overrides): the root conftest's tiny `arch` model with an untied random
    lm_head and random norm weights, so that greedy continuations vary token to token and every norm
    (Gemma's 1 + w included) is exercised."""
    from safetensors.torch import load_file, save_file

    def build(arch: str, folder, **overrides):
        folder = make_tiny(arch, folder, default_model, tie_word_embeddings=False, **overrides)
        tensors = load_file(folder / "model.safetensors")
        g = torch.Generator().manual_seed(1)
        for name, t in tensors.items():
            if t.ndim == 1 and "norm" in name:
                tensors[name] = (t.float() + 0.3 * torch.randn(t.shape, generator=g)).to(t.dtype)
            elif name == "lm_head.weight":
                tensors[name] = (0.3 * torch.randn(t.shape, generator=g)).to(t.dtype)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return folder

    return build


@pytest.fixture(scope="session")
def arch_models(tmp_path_factory, build_arch_model):
    """arch -> folder: tiny random Qwen3, Gemma 3 (a sliding-window layer, then a global one; final-logit
    soft-capping) and Mistral (sliding window 8) checkpoints for the engine, built on first use."""
    root, built = tmp_path_factory.mktemp("engine-archs"), {}

    def get(arch: str):
        if arch not in built:
            built[arch] = build_arch_model(arch, root / arch)
        return built[arch]

    return get
