"""llmpress synth: shapes, determinism, what transformers and the engine read, streaming, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from llmpress.cli import main
from llmpress.synth import synth


def _tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def test_8b_shape_with_two_layers_loads_in_transformers_and_engine_alike(synth_8b_2layers):
    """Every real 8B shape, 2 layers: transformers' logits equal the engine's; they are finite and
    not ties; the RMSNorms carry the outlier channels the compression algorithms need."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmpress.engine.llm_engine import EngineConfig, LLMEngine

    cfg = json.loads((synth_8b_2layers / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 4096 and cfg["intermediate_size"] == 14336
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and not cfg["tie_word_embeddings"]
    tok = AutoTokenizer.from_pretrained(synth_8b_2layers)
    ids = tok("The capital of France is Paris, and the capital of Germany is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == cfg["bos_token_id"]
    hf = AutoModelForCausalLM.from_pretrained(synth_8b_2layers, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(ids).logits[0]
    norm = hf.model.layers[0].input_layernorm.weight
    del hf
    engine = LLMEngine(EngineConfig(model=str(synth_8b_2layers), kv_cache_memory_bytes=64 << 20))
    ours = engine.prompt_logits(ids[0].tolist())
    assert torch.isfinite(ref).all()
    assert ref.std(-1).min() > 0.3  # logits spread: the model prefers some tokens
    assert len(set(ref.argmax(-1).tolist())) > ids.shape[1] // 2  # not one token everywhere
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    assert (ours - ref).abs().max() < 1e-3 * ref.abs().max()
    assert norm.max() > 6 * norm.median()  # outlier channels


def test_deterministic_per_seed_and_layers_are_a_prefix(small_config, tmp_path):
    a = _tensors(synth(str(small_config), tmp_path / "a", layers=2, seed=7, progress=False))
    b = _tensors(synth(str(small_config), tmp_path / "b", layers=2, seed=7, progress=False))
    c = _tensors(synth(str(small_config), tmp_path / "c", layers=2, seed=8, progress=False))
    full = _tensors(synth(str(small_config), tmp_path / "d", seed=7, progress=False))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a if a[k].numel() > 16)
    assert "model.layers.3.mlp.down_proj.weight" in full and "model.layers.2.mlp.down_proj.weight" not in a
    assert all(torch.equal(a[k], full[k]) for k in a)  # --layers 2 = the first two layers of the full model


def test_weights_have_trained_looking_scales(small_config, tmp_path):
    t = _tensors(synth(str(small_config), tmp_path / "m", progress=False))
    rows = t["model.layers.0.mlp.gate_proj.weight"].float().norm(dim=1)
    assert rows.max() / rows.min() > 1.5  # per-output-channel spread
    stds = [t[f"model.layers.{i}.self_attn.q_proj.weight"].float().std().item() for i in range(4)]
    assert max(stds) / min(stds) > 1.1  # per-layer scale
    o = t["model.layers.0.self_attn.o_proj.weight"].float().std()
    q = t["model.layers.0.self_attn.q_proj.weight"].float().std()
    assert o < q / 2  # residual writers scaled by 1/sqrt(2 * depth)
    for name in ("input_layernorm", "post_attention_layernorm"):
        w = t[f"model.layers.1.{name}.weight"].float()
        assert (w > 6 * w.median()).sum() >= 2


def test_tokenizer_covers_the_vocabulary_and_round_trips(synth_8b_2layers):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(synth_8b_2layers)
    cfg = json.loads((synth_8b_2layers / "config.json").read_text())
    assert len(tok) == cfg["vocab_size"]
    assert tok.bos_token_id == cfg["bos_token_id"] and tok.eos_token_id == cfg["eos_token_id"]
    texts = ["Hello world!", "  spaces\tand\nnewlines\r\n", "numbers 1234567 and 3.14159",
             "Café 日本語 🙂 ÿ\x00\x7f",
             "def f(x):\n    return x ** 2  # code", "<think>reasoning</think> answer"]
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        assert all(0 <= i < cfg["vocab_size"] for i in ids)
        assert tok.decode(ids) == text
    decoded = tok.batch_decode([[i] for i in range(cfg["vocab_size"])])
    assert len(decoded) == cfg["vocab_size"] and all(isinstance(s, str) for s in decoded)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n"


def test_full_128k_vocabulary_builds_in_seconds():
    import time

    from llmpress.synth.tokenizer import tokenizer_json

    t = time.perf_counter()
    tj = tokenizer_json(128256, 128000, 128001)
    assert time.perf_counter() - t < 60  # generous: seconds here, even on a busy 2-core host
    ids = sorted([*tj["model"]["vocab"].values(), *(a["id"] for a in tj["added_tokens"])])
    assert ids == list(range(128256))
    names = {a["id"]: a["content"] for a in tj["added_tokens"]}
    assert names[128000] == "<｜begin▁of▁sentence｜>" and names[128001] == "<｜end▁of▁sentence｜>"
    assert names[128011] == "<｜User｜>" and names[128013] == "<think>"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(tj))
    english = "Rayleigh scattering goes as one over wavelength to the fourth power, so blue light scatters more."
    assert len(english) / len(tok.encode(english, add_special_tokens=False).ids) > 2.5  # realistic token counts


def test_streamed_peak_memory_far_below_the_model_size(cut_8b_config, tmp_path):
    """A subprocess writes 1.1 GB of 8B-shape weights with 64 MB shards: its memory grows by about
    one shard plus one tensor, not the model."""
    code = textwrap.dedent(f"""
        import resource, sys
        from llmpress.synth import synth
        import transformers, torch  # the baseline: what any run imports
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = synth({str(cut_8b_config)!r}, {str(tmp_path / 'm')!r}, layers=2, progress=False, shard_bytes=64 << 20)
        print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base_kb, peak_kb = map(int, r.stdout.split())
    size = sum(p.stat().st_size for p in (tmp_path / "m").glob("*.safetensors"))
    assert size > 1e9
    grew = (peak_kb - base_kb) * 1024
    assert grew < 0.35 * size, (grew, size)


def _err(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_not_llama_family(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 100}))
    err = _err(capsys, ["synth", str(cfg), "--output", str(tmp_path / "o")])
    assert "GPT2LMHeadModel" in err and str(cfg) in err and "LlamaForCausalLM" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("layers", ["0", "33"])
def test_layers_out_of_range(capsys, tmp_path, layers):
    err = _err(capsys, ["synth", "deepseek-r1-distill-llama-8b", "--layers", layers, "--output", str(tmp_path / "o")])
    assert f"--layers {layers}" in err and "32" in err and "1 to 32" in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_config_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _err(capsys, ["synth", "nobody/no-such-model", "--output", str(tmp_path / "o")])
    assert "nobody/no-such-model" in err and "deepseek-r1-distill-llama-8b" in err and "HF_HUB_OFFLINE" in err


def test_output_exists(capsys, small_config, tmp_path):
    (tmp_path / "o").mkdir()
    err = _err(capsys, ["synth", str(small_config), "--output", str(tmp_path / "o")])
    assert "already exists" in err and "--overwrite" in err


def test_disk_too_small(capsys, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 10**9, 10**9))  # 1 GB free
    err = _err(capsys, ["synth", "deepseek-r1-distill-llama-8b", "--output", str(tmp_path / "o")])
    assert "needs 16.0" in err and "1.00 GB free" in err and "--layers" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_and_reports(capsys, small_config, tmp_path):
    assert main(["synth", str(small_config), "--layers", "1", "--seed", "3", "--output", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "tensors" in out
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["llmpress_synth"]["seed"] == 3
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        assert (tmp_path / "o" / f).is_file()
