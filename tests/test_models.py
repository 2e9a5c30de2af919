"""The default model: built offline from the packaged GGUF into a bf16 HF folder that works."""
import json

import pytest
import torch

from llmpress.models import ModelError, resolve_model


def test_default_model_folder_is_complete(default_model):
    assert resolve_model("default") == default_model == resolve_model(None)
    cfg = json.loads((default_model / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576
    assert "quantization_config" not in cfg
    assert cfg["rope_theta"] == 100000.0  # at the top level, for older readers such as vLLM
    for f in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (default_model / f).is_file()


@pytest.mark.slow
def test_default_model_generates_paris(default_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model)
    model = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:]).strip().startswith("Paris")


def test_missing_local_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="no such folder"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        resolve_model("some-org/some-model")
