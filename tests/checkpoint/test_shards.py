"""The streamed safetensors writer against safetensors' own reader, every dtype we write."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from llmpress.checkpoint.shards import CheckpointError, ShardWriter, write_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g)
    return {
        "f32": x, "bf16": x.bfloat16(), "f16": x.half(), "f64": x.double()[:2],
        "i8": torch.randint(-128, 127, (3, 4), dtype=torch.int8, generator=g),
        "u8": torch.randint(0, 255, (9,), dtype=torch.uint8, generator=g),
        "i32": torch.randint(-2**31, 2**31 - 1, (2, 3), dtype=torch.int32, generator=g),
        "i64": torch.arange(5), "bool": x > 0, "fp8": (x * 10).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(3.5), "empty": torch.empty(0, 4), "strided": x.t(),
    }


def test_reads_back_equal_with_safetensors(tmp_path):
    ts = _tensors()
    write_safetensors(tmp_path / "a.safetensors", ts, {"format": "pt"})
    back = load_file(tmp_path / "a.safetensors")
    assert set(back) == set(ts)
    for k, t in ts.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape, k
        assert torch.equal(back[k].view(torch.uint8) if t.dtype == torch.float8_e4m3fn else back[k],
                           t.contiguous().view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t), k
    with safe_open(tmp_path / "a.safetensors", "pt") as h:
        assert h.metadata() == {"format": "pt"}


def test_equal_inputs_give_equal_bytes(tmp_path):
    write_safetensors(tmp_path / "a.safetensors", _tensors(), {"format": "pt", "x": "1"})
    write_safetensors(tmp_path / "b.safetensors", _tensors(), {"x": "1", "format": "pt"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_shard_writer_splits_and_indexes(tmp_path):
    w = ShardWriter(tmp_path, max_shard_bytes=100)
    ts = {f"t{i}": torch.full((10,), float(i)) for i in range(5)}  # 40 bytes each
    for k, t in ts.items():
        w.add(k, t)
    w.close()
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    back = {}
    for f in files:
        back.update(load_file(tmp_path / f))
    assert all(torch.equal(back[k], t) for k, t in ts.items())


def test_unsupported_dtype_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="complex64"):
        write_safetensors(tmp_path / "c.safetensors", {"c": torch.zeros(2, dtype=torch.complex64)})


def test_overwrite_replaces_only_llmpress_folders(tmp_path):
    from llmpress.checkpoint.shards import OUTPUT_MARKER, OutputExistsError, atomic_output_dir

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not written by llmpress.*notes.txt"):
        with atomic_output_dir(precious, overwrite=True) as tmp:
            (tmp / "a").write_text("x")
    assert (precious / "notes.txt").read_text() == "mine" and not (precious / "a").exists()

    ours = tmp_path / "ours"
    for text in ("first", "second"):  # the second replaces the first: the first carries the marker
        with atomic_output_dir(ours, overwrite=True) as tmp:
            (tmp / "a").write_text(text)
    assert (ours / "a").read_text() == "second" and (ours / OUTPUT_MARKER).is_file()


def test_outputs_are_readable_per_umask(tmp_path):
    import os
    import stat

    from llmpress.checkpoint.shards import atomic_output_dir

    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "o") as tmp:
            (tmp / "a").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "o" / "a").stat().st_mode) == 0o644
