"""float_target (GPTQ toward the float model's output) and up -> down SmoothQuant, end to end on a tiny
Llama: the recipe keys, their refusals, and checkpoints that `llmpress check` passes."""
import json

import pytest
import torch

from llmpress.checkpoint.shards import LazyCheckpoint
from llmpress.compress import Recipe, RecipeError, compress
from llmpress.compress.smoothquant import SEARCH_ALPHAS


def _recipe(calib_file, **kw) -> Recipe:
    return Recipe(num_samples=4, max_seq_len=64, dataset=str(calib_file), dtype="float32", **kw)


def test_recipe_keys_and_refusals(tmp_path):
    r = Recipe(scheme="W4A16", float_target=True)
    path = tmp_path / "r.yaml"
    path.write_text(r.to_yaml())
    assert Recipe.from_yaml(path) == r
    assert Recipe(scheme="W8A8").mlp_smoothing_strength is None  # searched per layer
    w8 = Recipe(scheme="W8A8", mlp_smoothing_strength=0.3)
    path.write_text(w8.to_yaml())
    assert Recipe.from_yaml(path) == w8
    with pytest.raises(RecipeError, match="float_target must be true or false"):
        Recipe(float_target="yes")
    with pytest.raises(RecipeError, match=r"float_target applies to GPTQ"):
        Recipe(scheme="FP8_DYNAMIC", float_target=True).check_applies(["float_target"])
    with pytest.raises(RecipeError, match="mlp_smoothing_strength.*int8 activations"):
        Recipe(scheme="W4A16", mlp_smoothing_strength=0.5).check_applies(["mlp_smoothing_strength"])
    with pytest.raises(RecipeError, match=r"mlp_smoothing_strength must be in \[0, 1\]"):
        Recipe(scheme="W8A8", mlp_smoothing_strength=1.5)


def test_float_target_needs_the_staged_path(tiny_llama, calib_file, tmp_path):
    with pytest.raises(RecipeError, match="float_target needs the staged true-sequential path.*sequential: false"):
        compress(tiny_llama, _recipe(calib_file, float_target=True, sequential=False), tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def _compress(model, calib_file, folder, **kw):
    out = compress(model, _recipe(calib_file, **kw), folder, progress=False)
    report = json.loads((out / "check.json").read_text())  # the gate read it back in transformers, against the base
    assert report["passed"], report
    return LazyCheckpoint(out)


def test_float_target_changes_only_what_drifted(tiny_llama, calib_file, tmp_path):
    """Layer 0's q/k/v read the embeddings, the same in the float and the quantized model, so their GPTQ
    is untouched; everything downstream of a quantized Linear is aimed at the float output instead."""
    plain = _compress(tiny_llama, calib_file, tmp_path / "plain", scheme="W4A16", group_size=64)
    aimed = _compress(tiny_llama, calib_file, tmp_path / "aimed", scheme="W4A16", group_size=64, float_target=True)
    for name in ("q_proj", "k_proj", "v_proj"):
        key = f"model.layers.0.self_attn.{name}.weight_packed"
        assert torch.equal(plain.get(key), aimed.get(key)), key
    for key in ("model.layers.0.self_attn.o_proj.weight_packed", "model.layers.1.self_attn.q_proj.weight_packed",
                "model.layers.1.mlp.down_proj.weight_packed"):
        assert not torch.equal(plain.get(key), aimed.get(key)), key


@pytest.mark.parametrize("rotate", [False, True])
def test_w8a8_float_target_and_mlp_smoothing(tiny_llama, calib_file, tmp_path, rotate):
    """up -> down smoothing divides up_proj's rows by s (its per-channel weight scales follow) and
    multiplies down_proj's columns; searched by default, each layer's strength is recorded; with
    float_target on top, every checkpoint passes the gate."""
    off = _compress(tiny_llama, calib_file, tmp_path / "off", scheme="W8A8", rotate=rotate, mlp_smoothing_strength=0.0)
    on = _compress(tiny_llama, calib_file, tmp_path / "on", scheme="W8A8", rotate=rotate, mlp_smoothing_strength=0.5,
                   float_target=True)
    key = "model.layers.1.mlp.up_proj.weight_scale"
    ratio = off.get(key).float() / on.get(key).float()
    assert (ratio - 1).abs().max() > 0.1, ratio  # rows rescaled, not merely re-rounded
    stats = json.loads((tmp_path / "on" / "llmpress_compress.json").read_text())
    assert [layer["mlp_smoothing_strength"] for layer in stats["layers"]] == [0.5, 0.5]
    _compress(tiny_llama, calib_file, tmp_path / "searched", scheme="W8A8", rotate=rotate)
    stats = json.loads((tmp_path / "searched" / "llmpress_compress.json").read_text())
    assert all(layer["mlp_smoothing_strength"] in SEARCH_ALPHAS for layer in stats["layers"])
