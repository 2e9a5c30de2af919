"""The shared quantization definitions: QuantArgs <-> compressed-tensors JSON, a checkpoint's
quantization_config as dataclasses, and the one module matcher used by compress and the engine."""
from __future__ import annotations

import pytest
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig as CTConfig

from llmpress.quant import SCHEMES, QuantArgs, QuantizationConfig, matches


@pytest.mark.parametrize("name", list(SCHEMES))
def test_args_round_trip_through_compressed_tensors(name):
    """What we write, compressed-tensors parses to the same values, and from_ct reads back the same args."""
    s = SCHEMES[name]
    for args in filter(None, (s.weights, s.input_activations)):
        theirs = QuantizationArgs.model_validate(args.to_ct())
        assert (theirs.num_bits, theirs.type, theirs.symmetric, theirs.strategy, theirs.group_size, theirs.dynamic) == (
            args.num_bits, args.type, args.symmetric, args.strategy,
            args.group_size if args.strategy == "group" else None, args.dynamic)
        back = QuantArgs.from_ct(args.to_ct())
        assert back.to_ct() == args.to_ct()
        if not args.dynamic:
            assert back == args


def test_from_ct_fills_compressed_tensors_defaults():
    """Fields a foreign checkpoint leaves out take compressed-tensors' own defaults."""
    theirs = QuantizationArgs.model_validate({"num_bits": 4, "group_size": 128})
    ours = QuantArgs.from_ct({"num_bits": 4, "group_size": 128})
    assert (ours.strategy, ours.type, ours.symmetric) == (theirs.strategy, theirs.type, theirs.symmetric) == (
        "group", "int", True)
    theirs = QuantizationArgs.model_validate({"num_bits": 8})
    assert QuantArgs.from_ct({"num_bits": 8}).strategy == theirs.strategy == "tensor"


def _config(**over) -> dict:
    w4, w8 = SCHEMES["W4A16"], SCHEMES["W8A8"]
    qc = {"quant_method": "compressed-tensors", "format": "mixed-precision", "ignore": ["lm_head", "re:.*layers\\.0\\.mlp.*"],
          "config_groups": {
              "group_0": {"targets": ["re:.*down_proj$"], "weights": w8.weights.to_ct(),
                          "input_activations": w8.input_activations.to_ct()},
              "group_1": {"targets": ["Linear"], "weights": w4.weights.to_ct(), "input_activations": None}}}
    qc.update(over)
    return qc


def test_group_for_follows_targets_ignore_and_order():
    qc = QuantizationConfig.from_dict(_config())
    CTConfig.model_validate(_config())  # the fixture itself is a valid compressed-tensors config
    assert qc.group_for("lm_head") is None
    assert qc.group_for("model.layers.0.mlp.down_proj") is None  # the regex ignore wins over every target
    assert qc.group_for("model.layers.1.mlp.down_proj").weights == SCHEMES["W8A8"].weights
    assert qc.group_for("model.layers.1.mlp.down_proj").input_activations.strategy == "token"
    g = qc.group_for("model.layers.1.self_attn.q_proj")
    assert g.weights == SCHEMES["W4A16"].weights and g.input_activations is None


def test_malformed_group_names_itself():
    bad = _config(config_groups={"group_7": {"targets": ["Linear"], "weights": {"num_bits": "four"}}})
    with pytest.raises(ValueError, match="group_7"):
        QuantizationConfig.from_dict(bad)
    with pytest.raises(ValueError, match="group_3"):
        QuantizationConfig.from_dict(_config(config_groups={"group_3": {"targets": ["Linear"]}}))


@pytest.mark.parametrize("name, patterns, cls, expected", [
    ("model.layers.3.mlp.down_proj", ["mlp.down_proj"], None, True),  # dotted suffix
    ("model.layers.3.mlp.down_proj", ["down_proj"], None, True),
    ("model.layers.3.mlp.xdown_proj", ["down_proj"], None, False),  # a suffix only at a dot
    ("lm_head", ["lm_head"], None, True),
    ("model.layers.3.mlp.down_proj", ["re:.*down_proj$"], None, True),
    ("model.layers.3.mlp.down_proj", ["re:down_proj"], None, False),  # regexes match from the start
    ("model.layers.3.mlp.down_proj", ["Linear"], "Linear", True),  # a class name, when the class is given
    ("model.layers.3.mlp.down_proj", ["Linear"], None, False),
])
def test_matches(name, patterns, cls, expected):
    assert matches(name, patterns, cls) is expected
