"""AWQ (compress/awq.py and its per-layer orchestration in oneshot.py): the folds leave the float
model's function unchanged, the search objective equals the readers' output error computed the long
way, the search keeps s = 1 on flat activations and beats round-to-nearest on planted outliers, an
AWQ checkpoint reads back with transformers + compressed-tensors, and combinations AWQ does not
apply to are refused with one line."""
import json

import pytest
import torch
from conftest import make_tiny_model

from llmpress.cli import main
from llmpress.checkpoint.shards import LazyCheckpoint
from llmpress.compress import awq, calibrate, oneshot
from llmpress.compress.calibrate import run_layer
from llmpress.compress.recipe import Recipe, RecipeError
from llmpress.compress.targets import find_decoder_layers, target_linears
from llmpress.quant import QuantArgs

G32 = QuantArgs(4, "int", True, "group", 32)
G32_ASYM = QuantArgs(4, "int", False, "group", 32)


@pytest.fixture(scope="module")
def tiny_mha(tmp_path_factory, default_model):
    """A tiny Llama without grouped-query attention, so all four AWQ pairs apply (v_proj -> o_proj too)."""
    return make_tiny_model("llama", tmp_path_factory.mktemp("awq") / "mha", default_model, num_key_value_heads=4)


def _recipe(calib_file, **kw) -> Recipe:
    return Recipe(num_samples=6, max_seq_len=40, dataset=str(calib_file), dtype="float32", group_size=32, **kw)


def _float_layer(model, calib_file):
    """(recipe, config, layer 0 in float32, its target Linears, its calibration inputs), as compress sees them."""
    recipe = _recipe(calib_file, algorithm="awq")
    config, skeleton = oneshot.meta_model(model)
    prefix, layers = find_decoder_layers(skeleton, config.num_hidden_layers)
    ckpt = LazyCheckpoint(model)
    calib, _ = calibrate.calibration_inputs(model, skeleton, layers, recipe, ckpt, torch.device("cpu"), torch.float32)
    layer = layers[0]
    oneshot.materialize(layer, f"{prefix}.0", ckpt, "cpu", torch.float32)
    return recipe, config, layer, target_linears(layer, f"{prefix}.0", recipe.targets, recipe.ignore), calib.layer(0)


def test_folds_leave_the_float_layer_unchanged(tiny_mha, calib_file):
    """Every pair's search and fold on the float32 layer, then its outputs against the unscaled layer's."""
    recipe, config, layer, linears, inputs = _float_layer(tiny_mha, calib_file)
    before = run_layer(layer, inputs)
    W0 = {n: lin.weight.detach().clone() for n, lin in linears.items()}
    stats, _ = oneshot._awq_layer(layer, linears, inputs, recipe.quant_scheme.weights, config)
    assert len(stats["pairs"]) == 4, stats["pairs"]  # q/k/v, gate/up, v -> o, up -> down
    assert any(v["ratio"] > 0 for v in stats["pairs"].values()), "every search kept s = 1: the folds test nothing"
    assert any(not torch.equal(W0[n], lin.weight) for n, lin in linears.items())
    after = run_layer(layer, inputs)
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_clip_hessians_are_the_scaled_layers_own(tiny_mha, calib_file):
    """The Hessians _awq_layer hands to round-to-nearest's clip search, H / (s sᵀ) after each fold, are
    the ones the folded layer's inputs give, for every Linear (o_proj and the v -> o fold included)."""
    from llmpress.compress.calibrate import InputStats

    recipe, config, layer, linears, inputs = _float_layer(tiny_mha, calib_file)
    stats, clip = oneshot._awq_layer(layer, linears, inputs, recipe.quant_scheme.weights, config)
    assert set(clip) == set(linears) and any(v["ratio"] > 0 for v in stats["pairs"].values())
    fresh = InputStats(linears, hessian=True)
    run_layer(layer, inputs, before_each=fresh.new_sample)
    fresh.remove()
    H = {o: fresh.hessians[o].hessian() for o in set(fresh.owner.values())}
    for name in linears:
        ref = H[fresh.owner[name]]
        torch.testing.assert_close(clip[name], ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())
    _, none = oneshot._awq_layer(layer, linears, inputs, recipe.quant_scheme.weights, config, gptq=True)
    assert none == {}  # GPTQ builds its own


def test_fold_into_rows_is_exact_for_a_gated_mlp():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 24, generator=g)
    gate, up, down = torch.randn(40, 24, generator=g), torch.randn(40, 24, generator=g), torch.randn(24, 40, generator=g)
    bias = torch.randn(40, generator=g)
    ref = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T + bias)) @ down.T
    s = torch.rand(40, generator=g) * 4 + 0.1
    awq.fold_into_rows(up, bias, [down], s)
    got = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T + bias)) @ down.T
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


def _planted(outliers: bool):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2048, 128, generator=g)  # [tokens, C]
    if outliers:
        X[:, [3, 40, 77, 100]] *= 30.0  # a few salient channels (the paper's observation)
    W = torch.randn(96, 128, generator=g) * 0.05
    H = 2 / X.shape[0] * X.T @ X
    return X, W, H


@pytest.mark.parametrize("args", [G32, G32_ASYM], ids=["sym", "asym"])
def test_search_objective_is_the_readers_output_error(args):
    """tr(ΔW H ΔWᵀ) against ||X ΔWᵀ||² computed from the outputs themselves."""
    X, W, H = _planted(True)
    s = awq.candidate_scales(X.abs().mean(0), None, 0.5)
    dW = awq.scaled_quant_error(W, s, args)
    direct = 2 / X.shape[0] * ((X @ W.T - X @ (W - dW).T) ** 2).sum()
    assert awq.output_error(W, s, H, args) == pytest.approx(direct.item(), rel=1e-3)


def test_search_keeps_unit_scales_on_flat_activations():
    g = torch.Generator().manual_seed(2)
    X = torch.randint(0, 2, (2048, 128), generator=g).float() * 2 - 1  # |x| = 1 in every channel
    W = torch.randn(96, 128, generator=g) * 0.05
    res = awq.search_scales(X.abs().mean(0), [W], 2 / X.shape[0] * X.T @ X, G32, duo=False)
    assert res.ratio == 0.0
    torch.testing.assert_close(res.scales, torch.ones(128))
    assert res.loss == res.rtn_loss


@pytest.mark.parametrize("duo", [False, True, "both"])
@pytest.mark.parametrize("args", [G32, G32_ASYM], ids=["sym", "asym"])
def test_search_beats_round_to_nearest_on_planted_outliers(args, duo):
    X, W, H = _planted(True)
    res = awq.search_scales(X.abs().mean(0), [W], H, args, duo=duo)
    assert res.ratio > 0
    assert res.loss < 0.7 * res.rtn_loss, (res.loss, res.rtn_loss)
    # and on the outputs themselves, with the scales folded as compress folds them
    dq = lambda w: awq.scaled_quant_error(w, torch.ones(128), args)  # noqa: E731  (round-to-nearest error)
    rtn = ((X @ dq(W).T) ** 2).mean()
    ours = (((X / res.scales) @ awq.scaled_quant_error(W * res.scales, torch.ones(128), args).T) ** 2).mean()
    assert ours < 0.7 * rtn


def test_search_with_the_mse_observer_never_loses_to_its_round_to_nearest():
    """With the scheme's MSE observer, the chosen scales are judged as they will be rounded: with the
    output-scored clip search."""
    X, W, H = _planted(True)
    mse = QuantArgs(4, "int", True, "group", 32, observer="mse")
    res = awq.search_scales(X.abs().mean(0), [W], H, mse)
    assert res.rtn_loss == pytest.approx(awq.output_error(W, torch.ones(128), H, mse, clip=True), rel=1e-6)
    assert res.loss == pytest.approx(awq.output_error(W, res.scales, H, mse, clip=True), rel=1e-6)
    assert res.loss <= res.rtn_loss
    # that rounding is the clip search: on these loud channels it alone has far less error than min-max
    assert res.rtn_loss < 0.7 * awq.output_error(W, torch.ones(128), H, QuantArgs(4, "int", True, "group", 32))


@pytest.mark.parametrize("scheme,algorithm", [("W4A16", "awq"), ("W4A16_ASYM", "awq+gptq")])
def test_awq_checkpoint_reads_back(scheme, algorithm, tiny_llama, calib_file, tmp_path):
    """compress (with its `llmpress check` gate) writes a checkpoint that transformers +
    compressed-tensors load and that predicts close to the base model."""
    from llmpress.eval.perplexity import load_model

    out = tmp_path / "ckpt"
    code = main(["compress", str(tiny_llama), "--scheme", scheme, "--group-size", "32", "--algorithm", algorithm,
                 "--num-samples", "6", "--max-seq-len", "40", "--dataset", str(calib_file), "--dtype", "float32",
                 "--output", str(out)])
    assert code == 0
    stats = json.loads((out / "llmpress_compress.json").read_text())
    assert all(len(layer["awq"]["pairs"]) == 3 for layer in stats["layers"])  # GQA: no v -> o pair
    assert all(("gptq_loss" in layer) == ("gptq" in algorithm) for layer in stats["layers"])
    assert "algorithm: " + algorithm in (out / "recipe.yaml").read_text()
    ids = torch.randint(100, 5000, (1, 48), generator=torch.Generator().manual_seed(0))
    base, ours = load_model(tiny_llama), load_model(out)  # asymmetric int4: decompressed (perplexity.load_model)
    with torch.no_grad():
        p, q = base(ids).logits.log_softmax(-1), ours(ids).logits.log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    assert 0 < kl < 0.05, kl


@pytest.mark.parametrize("scheme", ["W8A8", "FP8_DYNAMIC"])
def test_awq_with_activation_quantization_is_refused(scheme, capsys, tmp_path):
    with pytest.raises(RecipeError, match="weight-only"):
        Recipe(scheme=scheme, algorithm="awq")
    code = main(["compress", "default", "--scheme", scheme, "--algorithm", "awq+gptq", "--output", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code != 0 and "weight-only" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_algorithm_and_gptq_flags():
    assert Recipe(algorithm="rtn").quant_scheme == Recipe(gptq=False).quant_scheme
    assert Recipe(algorithm="gptq").quant_scheme == Recipe().quant_scheme
    assert Recipe(algorithm="awq").quant_scheme.uses_gptq is False and Recipe(algorithm="awq").calibrated
    assert Recipe(algorithm="awq+gptq", gptq=True).quant_scheme.uses_gptq
    assert not Recipe(gptq=False).calibrated
    with pytest.raises(RecipeError, match="contradicts"):
        Recipe(algorithm="awq+gptq", gptq=False)
    with pytest.raises(RecipeError, match="algorithm must be one of"):
        Recipe(algorithm="smoothquant")
    with pytest.raises(RecipeError, match="dampening_frac"):
        Recipe(algorithm="awq").check_applies(["dampening_frac"])
    Recipe(algorithm="awq").check_applies(["num_samples"])  # AWQ reads calibration data


def test_awq_keeps_the_schemes_observer_unless_told():
    """AWQ + round-to-nearest keeps the scheme's MSE range search (scored on the output there: the clip
    search, observers.output_mse_qparams); an explicit observer wins."""
    assert Recipe().quant_scheme.weights.observer == "mse"
    assert Recipe(algorithm="awq").quant_scheme.weights.observer == "mse"
    assert Recipe(algorithm="awq", scheme="W4A16_ASYM").quant_scheme.weights.observer == "mse"
    assert Recipe(algorithm="awq", observer="minmax").quant_scheme.weights.observer == "minmax"
    assert Recipe(algorithm="awq+gptq").quant_scheme.weights.observer == "mse"


def test_round_to_nearest_with_a_hessian_uses_the_output_scored_ranges():
    """gptq.rtn_quantize given the input's Hessian (as compress gives it after AWQ) rounds with the
    output-scored ranges: less output error than without it on correlated, loud inputs."""
    from llmpress.compress.gptq import rtn_quantize
    from llmpress.quant import dequantize

    X, W, H = _planted(True)
    W[:, [3, 40, 77, 100]] *= 4.0
    mse = QuantArgs(4, "int", True, "group", 32, observer="mse")

    def err(res):
        d = dequantize(res.q, res.scale, res.zero_point).float() - W
        return float(((d @ H) * d).sum())

    assert err(rtn_quantize(W, mse, torch.float32, H)) < 0.9 * err(rtn_quantize(W, mse, torch.float32))
    minmax = QuantArgs(4, "int", True, "group", 32, observer="minmax")  # min-max ignores H
    assert torch.equal(rtn_quantize(W, minmax, torch.float32, H).scale, rtn_quantize(W, minmax, torch.float32).scale)


def test_plan_counts_the_awq_pass():
    """plan's compress model: AWQ adds its forward and search; AWQ without GPTQ still calibrates."""
    from llmpress import plan

    from llmpress.models import default_model_dir

    cfg = json.loads((default_model_dir() / "config.json").read_text())
    shape = plan.Shape.from_config(cfg)
    gptq = plan.compress_flops(shape, plan.CompressRun(group_size=64))
    both = plan.compress_flops(shape, plan.CompressRun(group_size=64, awq=True))
    awq_only = plan.compress_flops(shape, plan.CompressRun(group_size=64, gptq=False, awq=True))
    rtn = plan.compress_flops(shape, plan.CompressRun(group_size=64, gptq=False))
    assert both["AWQ search"] > 0 and sum(both.values()) > sum(gptq.values())
    assert "GPTQ" not in awq_only and awq_only["AWQ forward"] > 0 and "calibration forward" not in rtn
    assert plan.compress_run(Recipe(algorithm="awq"), 2, 2).awq
