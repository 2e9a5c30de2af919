"""compress --budget: the bits accounting and the greedy allocation (pure functions), and mixed
checkpoints of a tiny random Llama read by compressed-tensors' own schema, by transformers (bit for
bit our dequantized weights) and by `llmpress check`."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from llmpress.checkpoint.compressed_tensors import decompress_linear
from llmpress.compress import Recipe, compress
from llmpress.compress import budget
from llmpress.compress.recipe import RecipeError
from llmpress.quant import QuantArgs, get_scheme
from llmpress.checkpoint.shards import LazyCheckpoint


def test_bits_per_weight_counts_scales_and_zero_points():
    w4 = get_scheme("W4A16").with_group_size(128).weights
    assert budget.bits_per_weight(w4, 1024) == 4 + 16 / 128
    assert budget.cheapest_bits(w4) == 4.125
    asym = get_scheme("W4A16_ASYM").with_group_size(32).weights  # accounted for, though --budget refuses it (recipe.py)
    assert budget.bits_per_weight(asym, 576) == 4 + (16 + 4) / 32 == budget.cheapest_bits(asym)
    menu = budget.choice_schemes(get_scheme("W4A16").with_group_size(64))
    assert list(menu) == ["w4", "w4_half", "w8", "16"] and menu["w4_half"].weights.group_size == 32
    assert budget.bits_per_weight(menu["w4_half"].weights, 576) == 4.5
    w8 = menu["w8"]
    assert w8.format == "pack-quantized" and w8.weights.num_bits == 8 and w8.weights.strategy == "channel"
    assert budget.bits_per_weight(w8.weights, 576) == 8 + 16 / 576
    assert budget.bits_per_weight(None, 576) == 16 and budget.bits_per_weight(None, 576, dense_bits=32) == 32
    with pytest.raises(ValueError, match="tensor"):
        budget.bits_per_weight(QuantArgs(8, strategy="tensor"), 64)


def _unit(name, numel, e4, e8):
    return budget.Unit((name,), numel, {"w4": 4.0, "w8": 8.0, "16": 16.0}, {"w4": e4, "w8": e8, "16": 0.0})


def test_allocate_spends_the_budget_on_the_best_error_per_bit():
    units = [_unit("a", 100, 10.0, 0.1), _unit("b", 100, 50.0, 0.2), _unit("c", 200, 30.0, 0.1)]
    assert budget.allocate(units, 4.0) == {("a",): "w4", ("b",): "w4", ("c",): "w4"}
    # 400 more bits than all-W4 buys one 100-weight unit at W8: b, the largest gain per bit
    pick = budget.allocate(units, 5.0)
    assert pick == {("a",): "w4", ("b",): "w8", ("c",): "w4"}
    assert budget.average_bits(units, pick) <= 5.0
    # enough for c too (gain 29.9 over 800 bits beats a's 9.9 over 400)
    pick = budget.allocate(units, 7.0)
    assert pick == {("a",): "w4", ("b",): "w8", ("c",): "w8"}
    # with everything at W8, what is left goes to the largest W8 error per weight first
    pick = budget.allocate(units, 10.0)
    assert pick[("b",)] == "16" and budget.average_bits(units, pick) <= 10.0
    s = budget.summary(units, pick)
    assert s["average_bits"] == budget.average_bits(units, pick) and sum(c["units"] for c in s["choices"].values()) == 3
    with pytest.raises(ValueError, match="below the cheapest"):
        budget.allocate(units, 3.9)


def test_allocate_jumps_past_a_choice_that_is_worse_per_bit():
    """A non-convex error curve: W8 barely helps, unquantized removes it all; the greedy takes the jump."""
    units = [_unit("a", 100, 10.0, 9.9), _unit("b", 100, 1.0, 0.01)]
    pick = budget.allocate(units, 10.0)  # 1,200 bits over all-W4: a at 16 costs exactly that
    assert pick == {("a",): "16", ("b",): "w4"}


def test_output_error_is_the_quadratic_form():
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(6, 8, generator=g), torch.randn(50, 8, generator=g)
    Wq = W + 0.01 * torch.randn(6, 8, generator=g)
    H = 2 / 50 * X.T @ X
    ref = 2 / 50 * ((X @ (W - Wq).T) ** 2).sum()
    assert budget.output_error(W, Wq, H) == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("kwargs,words", [
    (dict(scheme="W8A8", budget=6.0), ["budget 6.0", "W8A8", "--scheme W4A16"]),
    (dict(budget=4.0), ["budget 4.0", "[4.125, 16)", "--budget"]),
    (dict(budget=16), ["budget 16", "[4.125, 16)"]),
    (dict(budget="lots"), ["budget", "'lots'"]),
    (dict(budget=5.0, algorithm="awq"), ["budget 5.0", "awq", "gptq or rtn"]),
    (dict(scheme="W4A16_ASYM", budget=5.0), ["budget 5.0", "W4A16_ASYM", "transformers", "--scheme W4A16"]),
])
def test_recipe_refuses_bad_budgets(kwargs, words):
    with pytest.raises(RecipeError) as e:
        Recipe(**kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert Recipe(group_size=32, budget=4.5).budget == 4.5  # 4.5 is the cheapest at group 32: allowed
    assert Recipe(budget=5, algorithm="rtn").calibrated  # sensitivities need the calibration data even without GPTQ


@pytest.fixture(scope="module")
def mixed(tiny_llama, calib_file, tmp_path_factory):
    """Two budgets on the tiny Llama (group 64: all-W4 costs 4.25 bits): 6 mixes W4 and W8; 12 puts every unit
    at W8 and leaves the most sensitive unquantized."""
    root = tmp_path_factory.mktemp("budget")  # compress runs `llmpress check` last: these passed the gate
    return {b: compress(tiny_llama, Recipe(group_size=64, num_samples=8, max_seq_len=64, dataset=str(calib_file),
                                           budget=b), root / f"b{b}", progress=False) for b in (6.0, 12.0)}


@pytest.mark.parametrize("b,kinds", [(6.0, {"w4", "w4_half", "w8"}), (12.0, {"w8", "16"})])
def test_mixed_checkpoint_is_valid_compressed_tensors_and_decompresses_exactly(mixed, tiny_llama, b, kinds):
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM

    out = mixed[b]
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    QuantizationConfig.model_validate(qc)  # the reader's own schema accepts it
    assert qc["format"] == "pack-quantized"
    stats = json.loads((out / "llmpress_compress.json").read_text())["budget"]
    assert len(stats["choices"]) >= 2 and set(stats["choices"]) <= kinds and stats["average_bits"] <= b
    assert stats["sensitivity"] == "local output error x output Fisher"  # the tiny model fits the Fisher pass
    bits_of, group_of = {}, {}
    for key, g in qc["config_groups"].items():
        assert g["format"] == "pack-quantized" and g["weights"]["num_bits"] in (4, 8)
        bits_of.update(dict.fromkeys(g["targets"], g["weights"]["num_bits"]))
        group_of.update(dict.fromkeys(g["targets"], key))
    unquantized = [n for n in qc["ignore"] if n != "lm_head"]
    assert len(bits_of) + len(unquantized) == 14 and not set(bits_of) & set(unquantized)
    for layer in range(2):  # fused groups share one precision (engine and vLLM fuse them)
        for fused in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")):
            assert len({group_of.get(f"model.layers.{layer}.{n}", "ignore") for n in fused}) == 1
    # what is stored: the bits accounting equals the bytes (int32 words, bf16 scales, bf16 dense)
    ck = LazyCheckpoint(out)  # the project's own reader of a checkpoint folder
    ours = {k: ck.get(k) for k in ck.keys()}
    stored = sum(ours[f"{n}.weight_packed"].numel() * 32 + ours[f"{n}.weight_scale"].numel() * 16 for n in bits_of)
    stored += sum(ours[f"{n}.weight"].numel() * 16 for n in unquantized)
    numel = sum(int(ours[f"{n}.weight_shape"].prod()) for n in bits_of)
    numel += sum(ours[f"{n}.weight"].numel() for n in unquantized)
    assert stored / numel == pytest.approx(stats["average_bits"], abs=1e-4)
    # transformers + compressed-tensors load it compressed, each module with its own group's scheme, and
    # decompress every quantized Linear to exactly our values. (transformers 5.25's decompress-at-load path,
    # run_compressed=False, decodes every dense module with the first config group's scheme, so it misreads
    # mixed checkpoints; llmpress's readers (eval.perplexity.load_model) use the compressed path for them.)
    from compressed_tensors.compressors.base import decompress_module

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    for n, bits in bits_of.items():
        mod = model.get_submodule(n)
        assert mod.quantization_scheme.weights.num_bits == bits
        decompress_module(mod)
        t = {k.rsplit(".", 1)[1]: v for k, v in ours.items() if k.rsplit(".", 1)[0] == n}
        scheme = get_scheme("W4A16") if bits == 4 else budget.choice_schemes(get_scheme("W4A16"))["w8"]
        torch.testing.assert_close(mod.weight.data, decompress_linear(t, scheme), rtol=0, atol=0)
    with safe_open(tiny_llama / "model.safetensors", "pt") as h:  # unquantized Linears: the source's bits
        for n in unquantized:
            torch.testing.assert_close(ours[n + ".weight"], h.get_tensor(n + ".weight"), rtol=0, atol=0)


def test_weight_by_fisher_moves_the_budget_to_what_the_logits_feel():
    units = [_unit("a", 100, 10.0, 0.1), _unit("b", 100, 50.0, 0.2)]
    assert budget.allocate(units, 6.0) == {("a",): "w4", ("b",): "w8"}  # local error: b
    assert not budget.weight_by_fisher(units, {"a": 1.0})  # b has no value: nothing changes
    assert units[1].error["w4"] == 50.0
    assert budget.weight_by_fisher(units, {"a": 100.0, "b": 1.0})
    assert units[0].error == {k: v * 100.0 for k, v in _unit("a", 100, 10.0, 0.1).error.items()}
    assert budget.allocate(units, 6.0) == {("a",): "w8", ("b",): "w4"}  # a's errors now matter 100x more


def test_output_fisher_is_the_mean_squared_gradient_at_each_output(tiny_llama):
    """The backward hooks' F̄ equals autograd's own gradient of the same sampled-label loss w.r.t. one
    Linear's output, computed independently here."""
    from transformers import AutoModelForCausalLM

    from llmpress.compress.fisher import output_fisher

    samples = [torch.randint(10, 1000, (1, 24), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    fisher = output_fisher(tiny_llama, samples, "model.layers", seed=5, progress=False)
    assert len(fisher) == 14 and all(v > 0 and torch.isfinite(torch.tensor(v)) for v in fisher.values())

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    name = "model.layers.1.mlp.down_proj"
    captured = []
    model.get_submodule(name).register_forward_hook(lambda _m, _i, out: captured.append(out))
    gen, total, count = torch.Generator().manual_seed(5), 0.0, 0
    for ids in samples:
        captured.clear()
        logits = model(ids).logits[0].float()
        labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen)[:, 0]
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        (g,) = torch.autograd.grad(loss, captured[0])
        total, count = total + float(g.double().pow(2).sum()), count + g.numel()
    assert fisher[name] == pytest.approx(total / count, rel=1e-4)
