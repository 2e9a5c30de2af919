"""SmoothQuant's folds must leave the float model's outputs unchanged (before any quantization)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmpress.compress.calibrate import InputStats, capture_layer_inputs, run_layer
from llmpress.compress.smoothquant import (
    SEARCH_ALPHAS, fold_into_norm, fold_into_up, fold_into_v, head_expand, head_reduce_max, move_hessian,
    search_smoothing, smoothing_scales, vo_smoothing_scales,
)
from llmpress.compress.observers import minmax_qparams
from llmpress.quant import SCHEMES, dynamic_per_token, fake_quantize
from llmpress.compress.targets import smooth_pairs, target_linears


def _layer_and_inputs():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=1, num_attention_heads=6,
                      num_key_value_heads=2, vocab_size=200, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # outlier channels, which is what SmoothQuant is for
        model.model.layers[0].input_layernorm.weight[:3] = 20.0
    samples = [torch.randint(0, 200, (1, n)) for n in (9, 31)]
    inputs = capture_layer_inputs(model.model, model.model.layers[0], samples, torch.device("cpu"))
    return cfg, model.model.layers[0], inputs


def test_folds_are_exact_and_shrink_outliers():
    cfg, layer, inputs = _layer_and_inputs()
    ref = run_layer(layer, inputs)
    linears = target_linears(layer, "model.layers.0", ("Linear",), ())
    stats = InputStats(linears, hessian=True, act_max=True)
    run_layer(layer, inputs, before_each=stats.new_sample)
    stats.remove()
    before = stats.act_max[stats.owner["self_attn.q_proj"]]
    H = stats.hessians[stats.owner["self_attn.q_proj"]].hessian()
    pairs = smooth_pairs(layer, set(linears))
    assert [p[0] for p in pairs] == ["input_layernorm", "post_attention_layernorm"]
    scales = {}
    for norm, readers in pairs:
        ws = [linears[r].weight for r in readers]
        s = smoothing_scales(stats.act_max[stats.owner[readers[0]]], ws, 0.8)
        fold_into_norm(layer.get_submodule(norm).weight, ws, s)
        scales[norm] = s
    s_kv = vo_smoothing_scales(stats.act_max["self_attn.o_proj"], linears["self_attn.o_proj"].weight, 6, 2, 0.8)
    fold_into_v(linears["self_attn.v_proj"].weight, None, linears["self_attn.o_proj"].weight, s_kv, 6, 2)
    out = run_layer(layer, inputs)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
    # the smoothed activations have a much smaller max/median spread
    after = before / scales["input_layernorm"]
    assert (after.max() / after.median()) < 0.5 * (before.max() / before.median())
    # and the analytic Hessian move equals the Hessian of the smoothed inputs
    stats2 = InputStats({"self_attn.q_proj": linears["self_attn.q_proj"]}, hessian=True)
    run_layer(layer, inputs, before_each=stats2.new_sample)
    stats2.remove()
    torch.testing.assert_close(stats2.hessian("self_attn.q_proj"), move_hessian(H, scales["input_layernorm"]), rtol=1e-4, atol=1e-5)


def test_gqa_head_maps():
    s = torch.arange(2 * 4, dtype=torch.float32)  # 2 kv heads x d=4
    e = head_expand(s, num_heads=6, num_kv_heads=2)  # query heads 0-2 read kv 0, 3-5 read kv 1
    assert e.shape == (24,)
    assert torch.equal(e[:12], s[:4].repeat(3)) and torch.equal(e[12:], s[4:].repeat(3))
    x = torch.arange(24, dtype=torch.float32)
    r = head_reduce_max(x, 6, 2)
    assert torch.equal(r, torch.cat([x[8:12], x[20:24]]))


def test_up_down_fold_is_exact():
    """A gated MLP's output is unchanged when up_proj's rows are divided by s and down_proj's columns multiplied."""
    cfg, layer, inputs = _layer_and_inputs()
    mlp = layer.mlp
    x = torch.randn(2, 7, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = mlp(x)
        s = torch.rand(cfg.intermediate_size, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
        fold_into_up(mlp.up_proj.weight, mlp.down_proj.weight, s)
        torch.testing.assert_close(mlp(x), want, rtol=1e-5, atol=1e-5)


def _down_input(outliers: bool, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, 160, generator=g)
    if outliers:  # a few channels 50x louder, as a gated MLP's activation has
        x[:, :4] *= 50
    W = torch.randn(96, 160, generator=g) * 0.05
    return x, W


def test_smoothing_search_picks_the_least_output_error():
    scheme = SCHEMES["W8A8"]
    act = lambda t: dynamic_per_token(t, scheme.input_activations)  # noqa: E731
    for outliers in (True, False):
        x, W = _down_input(outliers)
        amax = x.abs().amax(0)
        s, alpha, errors = search_smoothing(x, W, amax, scheme.weights, act)
        assert len(errors) == len(SEARCH_ALPHAS) and errors[SEARCH_ALPHAS.index(alpha)] == min(errors)
        scale, zp = minmax_qparams(W, scheme.weights, torch.float32)
        ref = x @ W.T
        err = ((act(x) @ fake_quantize(W, scale, zp, scheme.weights).T - ref) ** 2).sum(-1)
        plain = (err / (ref**2).sum(-1)).sum().item()  # each row's error relative to its output
        assert abs(errors[0] - plain) < 1e-4 * plain  # α = 0: no smoothing, only the two roundings
        want = smoothing_scales(amax, [W], alpha) if alpha else torch.ones(160)
        torch.testing.assert_close(s, want)
        if outliers:  # the loud channels swamp per-token int8: smoothing must pay
            assert alpha > 0 and min(errors) < 0.5 * errors[0], errors
