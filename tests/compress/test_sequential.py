"""The staged one-pass layer computation must equal transformers' own decoder layer."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmpress.compress import sequential
from llmpress.compress.smoothquant import fold_into_up, fold_into_v, smoothing_scales, vo_smoothing_scales
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
    outs = sequential.StagedLayer(layer).run(inputs, lambda names, H, amax, D: seen.append(names))
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

    def zero_v(names, H, amax, D):
        hess[names] = H
        if names == sequential.QKV:
            layer.self_attn.v_proj.weight.data.zero_()

    sequential.StagedLayer(layer).run(inputs, zero_v)
    assert hess[sequential.O].abs().max() == 0  # o_proj's input was v's (now zero) output
    with torch.no_grad():
        for n, p in layer.named_parameters():
            p.copy_(saved[n])


def _restore(layer, saved):
    with torch.no_grad():
        for n, p in layer.named_parameters():
            p.copy_(saved[n])


def test_float_stages_are_the_layer_and_pair_with_the_staged_inputs(model_and_inputs):
    """float_stages' outputs are the layer's; handed back as the reference for the same inputs and
    weights, every group's drift term D = Σ (x_fp - x)ᵀ x is exactly zero (same samples, same order)."""
    model, inputs = model_and_inputs
    layer = model.model.layers[0]
    stages, outs = sequential.float_stages(layer, inputs)
    for o, r in zip(outs, run_layer(layer, inputs)):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    assert [len(v) for v in stages.values()] == [len(inputs)] * 4
    shifts = {}
    sequential.StagedLayer(layer).run(inputs, lambda names, H, amax, D: shifts.__setitem__(names, D),
                                      reference=stages)
    assert list(shifts) == list(sequential.GROUPS)
    for names, D in shifts.items():
        assert D is not None and D.abs().max() == 0, names


def test_drift_term_is_its_definition(model_and_inputs):
    """With the float model's inputs perturbed, q/k/v's D is 2/n Σ (norm(x_fp) - norm(x))ᵀ norm(x)."""
    model, inputs = model_and_inputs
    layer = model.model.layers[0]
    g = torch.Generator().manual_seed(1)
    float_inputs = [(x + 0.1 * torch.randn(x.shape, generator=g), kw) for x, kw in inputs]
    stages, _ = sequential.float_stages(layer, float_inputs)
    norm = layer.input_layernorm
    want = sum((norm(xf) - norm(x))[0].T @ norm(x)[0] for (x, _), (xf, _) in zip(inputs, float_inputs))
    want = want * 2 / sum(x.shape[1] for x, _ in inputs)
    got = {}
    sequential.StagedLayer(layer).run(inputs, lambda names, H, amax, D: got.__setitem__(names, D),
                                      reference=stages)
    torch.testing.assert_close(got[sequential.QKV], want.detach(), rtol=1e-4, atol=1e-6)
    assert got[sequential.DOWN].abs().max() > 0


def test_reference_follows_the_vo_and_up_down_folds(model_and_inputs):
    """SmoothQuant v -> o and up -> down fold during the staged run, after the float reference was taken:
    the reference's o_proj / down_proj inputs are divided by the same scales, so with unchanged inputs
    the drift terms stay zero (to rounding) and the layer still computes the same outputs."""
    model, inputs = model_and_inputs
    layer = model.model.layers[1]
    saved = {n: p.detach().clone() for n, p in layer.named_parameters()}
    want = run_layer(layer, inputs)
    stages, _ = sequential.float_stages(layer, inputs)
    attn, mlp = layer.self_attn, layer.mlp
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads

    def before_qkv(o_max):
        s = vo_smoothing_scales(o_max, attn.o_proj.weight, heads, kv, 0.8)
        return fold_into_v(attn.v_proj.weight, None, attn.o_proj.weight, s, heads, kv)

    scales = []

    def before_gate_up(m_max, m_rows):
        assert m_rows.shape[-1] == m_max.numel()
        s = smoothing_scales(m_max, [mlp.down_proj.weight], 0.5)
        scales.append(s)
        fold_into_up(mlp.up_proj.weight, mlp.down_proj.weight, s)
        return s

    shifts = {}
    outs = sequential.StagedLayer(layer).run(
        inputs, lambda names, H, amax, D: shifts.__setitem__(names, (H, D)), before_qkv=before_qkv,
        before_gate_up=before_gate_up, reference=stages)
    assert scales and (scales[0] - 1).abs().max() > 0.5  # the folds did move something
    for names, (H, D) in shifts.items():
        assert D.abs().max() <= 1e-4 * H.abs().max(), names
    for o, r in zip(outs, want):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
    _restore(layer, saved)


def test_drift_term_in_bf16_matches_float32():
    """bf16 calibration: D's products of the same bf16 inputs run in bf16 with float32 sums, within
    bf16 rounding of the float32 products."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 700, 64, generator=g).bfloat16() for _ in range(2)]
    x_fps = [(x + 0.05 * torch.randn(x.shape, generator=g)).bfloat16() for x in xs]
    got = {}
    for dt in (torch.float32, torch.bfloat16):
        st = sequential._Stats(False, [x.to(dt) for x in x_fps])
        for x in xs:
            st.add(x.to(dt))
        got[dt] = st.shift()
    scale = got[torch.float32].abs().max().item()
    assert (got[torch.bfloat16] - got[torch.float32]).abs().max().item() < 0.01 * scale
