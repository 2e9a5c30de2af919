"""Our writer against compressed-tensors' own reader: packing bit for bit, and whole
checkpoints loaded by transformers + compressed-tensors decompress to exactly our
dequantized weights."""
import json

import pytest
import torch
from safetensors import safe_open

from llmpress.checkpoint.compressed_tensors import decompress_linear, pack_int, unpack_int
from llmpress.compress import Recipe, compress
from llmpress.quant import get_scheme
from llmpress.checkpoint.shards import LazyCheckpoint


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack_roundtrip_and_matches_reference_packer(bits, dim):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.randint(lo, hi + 1, (37, 70), dtype=torch.int8)
    packed = pack_int(q, bits, dim=dim)
    assert packed.dtype == torch.int32
    n = q.shape[dim]
    torch.testing.assert_close(unpack_int(packed, bits, n, dim=dim), q, rtol=0, atol=0)
    ref = pack_to_int32(q, bits, packed_dim=dim)
    torch.testing.assert_close(packed, ref, rtol=0, atol=0)
    torch.testing.assert_close(unpack_from_int32(packed, bits, q.shape, packed_dim=dim), q, rtol=0, atol=0)


def _load_dense(folder):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, quantization_config=CompressedTensorsConfig(run_compressed=False)
    )
    return model.state_dict()


@pytest.mark.parametrize("scheme,group", [("W4A16", 64), ("W4A16_ASYM", 64), ("W8A16", None), ("W8A8", None), ("FP8_DYNAMIC", None)])
def test_checkpoint_loads_in_transformers_and_decompresses_exactly(tiny_llama, calib_file, tmp_path, scheme, group):
    out = tmp_path / scheme
    recipe = Recipe(scheme=scheme, group_size=group, num_samples=8, max_seq_len=64, dataset=str(calib_file))
    compress(tiny_llama, recipe, out, progress=False)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == get_scheme(scheme).format
    from compressed_tensors.quantization import QuantizationConfig

    QuantizationConfig.model_validate(cfg)  # the reader's own schema accepts it
    ck = LazyCheckpoint(out)  # the project's own reader of a checkpoint folder
    ours = {k: ck.get(k) for k in ck.keys()}
    dense = _load_dense(out)
    s = get_scheme(scheme)
    prefixes = sorted({k.rsplit(".", 1)[0] for k in ours if k.endswith("weight_scale")})
    assert len(prefixes) == 7 * 2  # every Linear of both decoder layers
    for p in prefixes:
        mine = decompress_linear({k.rsplit(".", 1)[1]: v for k, v in ours.items() if k.rsplit(".", 1)[0] == p}, s)
        theirs = dense[p + ".weight"]
        assert theirs.dtype == mine.dtype
        torch.testing.assert_close(theirs, mine, rtol=0, atol=0)
    # untouched tensors are carried over bit for bit
    with safe_open(tiny_llama / "model.safetensors", "pt") as h:
        torch.testing.assert_close(ours["model.embed_tokens.weight"], h.get_tensor("model.embed_tokens.weight"), rtol=0, atol=0)
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file() and (out / "recipe.yaml").is_file()


def test_quantized_model_tracks_the_base(tiny_llama, calib_file, tmp_path):
    """The W8A8 checkpoint, as transformers runs it (with dynamic int8 activations),
    stays close to the float model: a sanity check on the whole pipeline."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "w8a8"
    compress(tiny_llama, Recipe(scheme="W8A8", num_samples=8, max_seq_len=64, dataset=str(calib_file)), out, progress=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    quant = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(0, 49152, (1, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lb, lq = base(ids).logits, quant(ids).logits
    rel = ((lq - lb).norm() / lb.norm()).item()
    assert rel < 0.05, rel
