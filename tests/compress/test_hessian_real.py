"""Regression on real activations: SmolLM2's layer 11 down_proj input has a "massive
activation" channel (max |x| ~ 1e4 against ~1). Plain bf16 products then break Cholesky
at GPTQ's dampening; our accumulator must stay positive definite and near-exact."""
import pytest
import torch

from llmpress.checkpoint.shards import LazyCheckpoint
from llmpress.compress import calibrate, oneshot, sequential
from llmpress.compress.gptq import HessianAccumulator, inverse_cholesky
from llmpress.compress.recipe import Recipe
from llmpress.compress.targets import find_decoder_layers


@pytest.mark.slow
def test_bf16_hessian_with_massive_activations(default_model):
    recipe = Recipe(scheme="W4A16", group_size=64, num_samples=16)
    config, skeleton = oneshot.meta_model(default_model)
    prefix, layers = find_decoder_layers(skeleton, config.num_hidden_layers)
    ckpt = LazyCheckpoint(default_model)
    dt = torch.bfloat16
    calib, _ = calibrate.calibration_inputs(default_model, skeleton, layers, recipe, ckpt, torch.device("cpu"), dt)
    xs = []
    for i in range(12):
        layer = layers[i]
        oneshot.materialize(layer, f"{prefix}.{i}", ckpt, "cpu", dt)
        if i == 11:
            layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: xs.append(a[0].reshape(-1, a[0].shape[-1])))
        calib.hidden = sequential.StagedLayer(layer).run(calib.layer(i), lambda *a: None)
    x = torch.cat(xs)
    assert x.abs().max() > 1000  # the massive channel is there
    exact = 2 / x.shape[0] * (x.float().T @ x.float())

    plain = torch.zeros_like(exact)  # the naive bf16 recipe, for contrast
    for c in x.split(512):
        plain += (c.T @ c).float()
    plain *= 2 / x.shape[0]
    msgs = []
    _, frac = inverse_cholesky(plain, 0.1, warn=msgs.append)
    assert frac > 0.1, "plain bf16 products should need more dampening here"

    acc = HessianAccumulator(x.shape[1])
    for c in x.split(480):
        acc.add(c)
    H = acc.hessian()
    assert ((H - exact).norm() / exact.norm()) < 1e-5
    _, frac = inverse_cholesky(H, 0.1, warn=msgs.append)
    assert frac == 0.1
