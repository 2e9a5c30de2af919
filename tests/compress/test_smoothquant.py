"""SmoothQuant's folds must leave the float model's outputs unchanged (before any quantization)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llmpress.compress.calibrate import InputStats, capture_layer_inputs, run_layer
from llmpress.compress.smoothquant import (
    fold_into_norm, fold_into_v, head_expand, head_reduce_max, move_hessian, smoothing_scales, vo_smoothing_scales,
)
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
