"""Hadamard rotation (rotate.py): the rotated unquantized model computes the original's logits, and a
rotated W4A16 checkpoint reads back in transformers + compressed-tensors close to the unrotated base."""
import json

import pytest
import torch
from conftest import make_tiny_model

from llmpress.checkpoint.shards import LazyCheckpoint
from llmpress.compress import Recipe, compress
from llmpress.compress.rotate import RotatedCheckpoint, hadamard, random_hadamard


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 48, 64, 576, 2048])
def test_hadamard_orders(n):
    h = hadamard(n)
    assert h is not None and set(h.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(h @ h.T, n * torch.eye(n, dtype=torch.float64), rtol=0, atol=0)
    rot = random_hadamard(n, 0)
    q = rot.matrix()
    torch.testing.assert_close(q @ q.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    # the Kronecker-factored products equal the dense ones on random inputs
    x = torch.randn(5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(rot.right(x), x @ (hadamard(n) * rot.signs / n ** 0.5))
    torch.testing.assert_close(rot.left_t(x.T), q.T @ x.T)


def test_no_hadamard_where_none_exists():
    assert hadamard(6) is None and hadamard(10) is None
    with pytest.raises(ValueError, match="order 6"):
        random_hadamard(6, 0)


def _logits_equal(folder):
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = torch.randint(0, 49152, (2, 48), generator=torch.Generator().manual_seed(0))
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(ids).logits
    del ref
    config = AutoConfig.from_pretrained(folder)
    view = RotatedCheckpoint(LazyCheckpoint(folder), config, seed=3, dtype=torch.float32)
    config.tie_word_embeddings = False
    rot = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    missing, unexpected = rot.load_state_dict({k: view.get(k) for k in view.keys()}, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    assert all(bool((view.get(k) == 1).all()) for k in view.keys() if k.endswith("norm.weight"))
    with torch.no_grad():
        got = rot(ids).logits
    assert not torch.allclose(view.get("model.embed_tokens.weight"),
                              LazyCheckpoint(folder).get("model.embed_tokens.weight").float())  # it did rotate
    err = (got - want).abs().max().item()
    assert err < 2e-4 * want.abs().max().item(), err


def test_rotated_tiny_llamas_compute_the_same_logits(tiny_llama, tmp_path, default_model):
    _logits_equal(tiny_llama)  # tied embeddings, head_dim 32
    _logits_equal(make_tiny_model("llama", tmp_path / "t", default_model, num_attention_heads=4, head_dim=16))


def test_rotated_default_model_computes_the_same_logits(default_model):
    _logits_equal(default_model)  # hidden 576 = 12 x 48, head_dim 64, 30 layers, tied


def test_rotated_w4a16_checkpoint_reads_back(tiny_llama, calib_file, tmp_path):
    recipe = Recipe(scheme="W4A16", group_size=64, num_samples=4, max_seq_len=64, dataset=str(calib_file),
                    dtype="float32", rotate=True)
    out = compress(tiny_llama, recipe, tmp_path / "rot", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    ck = LazyCheckpoint(out)
    assert "lm_head.weight" in ck and bool((ck.get("model.layers.1.input_layernorm.weight") == 1).all())
    report = json.loads((out / "check.json").read_text())  # the gate loaded it in transformers, against the base
    assert report["passed"] and report["quality"]["kl_divergence"] < 0.05, report


def test_rotation_turns_smoothquant_off_unless_asked(tiny_llama, calib_file, tmp_path):
    """W8A8 with rotate: SmoothQuant's default strength becomes 0 (the rotation spreads the outliers;
    smoothing on top cost KL, benchmarks/README.md), so the rotated norms stay all-ones; an explicit
    strength still smooths them."""
    assert Recipe(scheme="W8A8").smoothing_strength == 0.8
    assert Recipe(scheme="W8A8", rotate=True).smoothing_strength == 0.0
    assert Recipe(scheme="W8A8", rotate=True, smoothing_strength=0.5).smoothing_strength == 0.5
    norms = {}
    for alpha in (None, 0.8):
        recipe = Recipe(scheme="W8A8", num_samples=4, max_seq_len=64, dataset=str(calib_file), dtype="float32",
                        rotate=True, smoothing_strength=alpha)
        out = compress(tiny_llama, recipe, tmp_path / f"rot-{alpha}", progress=False)
        assert f"smoothing_strength: {recipe.smoothing_strength}" in (out / "recipe.yaml").read_text()
        norms[alpha] = LazyCheckpoint(out).get("model.layers.1.input_layernorm.weight")
    assert bool((norms[None] == 1).all()) and not bool((norms[0.8] == 1).all())
