"""The staged one-pass layer computation must equal transformers' own decoder layer."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmpress.compress import sequential
from llmpress.compress.calibrate import capture_layer_inputs, run_layer
from llmpress.quant import SCHEMES, dynamic_per_token


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, vocab_size=300, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    samples = [torch.randint(0, 300, (1, n)) for n in (5, 17, 33)]
    inputs = capture_layer_inputs(model.model, model.model.layers[0], samples, torch.device("cpu"))
    return model, inputs


def test_staged_forward_equals_transformers_layer(model_and_inputs):
    model, inputs = model_and_inputs
    layer = model.model.layers[0]
    seen = []
    outs = sequential.StagedLayer(layer).run(inputs, lambda names, H, amax: seen.append(names))
    ref = run_layer(layer, inputs)
    assert seen == list(sequential.GROUPS)
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_staged_activation_quant_matches_hooked_layer(model_and_inputs):
    model, inputs = model_and_inputs
    layer = model.model.layers[1]
    args = SCHEMES["W8A8"].input_activations
    outs = sequential.StagedLayer(layer, lambda x: dynamic_per_token(x, args)).run(inputs, lambda *a: None)
    hooks = [m.register_forward_pre_hook(lambda _m, a: (dynamic_per_token(a[0], args),))
             for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    ref = run_layer(layer, inputs)
    for h in hooks:
        h.remove()
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_staged_hessians_see_already_quantized_groups(model_and_inputs):
    """After q/k/v change, o_proj's Hessian must come from the changed attention output."""
    model, inputs = model_and_inputs
    layer = model.model.layers[0]
    saved = {n: p.detach().clone() for n, p in layer.named_parameters()}
    hess = {}

    def zero_v(names, H, amax):
        hess[names] = H
        if names == sequential.QKV:
            layer.self_attn.v_proj.weight.data.zero_()

    sequential.StagedLayer(layer).run(inputs, zero_v)
    assert hess[sequential.O].abs().max() == 0  # o_proj's input was v's (now zero) output
    with torch.no_grad():
        for n, p in layer.named_parameters():
            p.copy_(saved[n])
