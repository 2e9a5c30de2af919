"""Streamed safetensors I/O: read a model tensor by tensor (memory-mapped), write it
shard by shard, and publish the output folder atomically.

Only safetensors is read or written: no pickle anywhere.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from ..errors import LlmpressError

WEIGHTS_INDEX = "model.safetensors.index.json"


class CheckpointError(LlmpressError, ValueError):
    """A model folder we cannot read; the message names the fix."""


class LazyCheckpoint:
    """Tensor name -> tensor, read on demand from memory-mapped safetensors files."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / WEIGHTS_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                bins = [p.name for p in self.folder.glob("*.bin")] + [p.name for p in self.folder.glob("*.pt")]
                hint = f" (found {', '.join(bins)}: pickle files are not loaded; convert them to safetensors)" if bins else ""
                raise CheckpointError(f"{self.folder}: no *.safetensors weights{hint}")
            weight_map = {}
            for f in files:
                with safe_open(f, "pt") as h:
                    weight_map.update({k: f.name for k in h.keys()})
        self.weight_map: dict[str, str] = weight_map

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        # A handle per read: the file mapping is dropped as soon as the tensor is copied
        # out, so pages of layers already processed do not stay resident.
        with safe_open(self.folder / self.weight_map[name], "pt") as h:
            return h.get_tensor(name)

    def nbytes(self) -> int:
        return sum((self.folder / f).stat().st_size for f in set(self.weight_map.values()))


# safetensors dtype codes (https://github.com/huggingface/safetensors, format section)
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """One safetensors file, streamed: an 8-byte little-endian header length, the JSON header
    (padded with spaces to 8 bytes), then each tensor's bytes straight from its storage.
    safetensors' own save_file first copies every tensor into a Python bytes object, so it
    holds the shard twice; this holds nothing extra. The header is written in insertion
    order with sorted metadata, so equal inputs give equal bytes."""
    header: dict = {"__metadata__": dict(sorted((metadata or {}).items()))} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _ST_DTYPES:
            raise CheckpointError(f"tensor {name}: dtype {t.dtype} has no safetensors code")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for t in tensors.values():
            if t.numel():
                f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


class ShardWriter:
    """Buffers tensors and writes a safetensors shard whenever `max_shard_bytes` is
    reached, so peak memory is one shard, not the model (the shard is streamed to disk,
    never copied)."""

    def __init__(self, folder: Path, max_shard_bytes: int = 256 << 20, metadata: dict | None = None):
        self.folder = Path(folder)
        self.max = max_shard_bytes
        self.metadata = {"format": "pt", **(metadata or {})}
        self.buf: dict[str, torch.Tensor] = {}
        self.buf_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        t = tensor.detach().contiguous()
        self.buf[name] = t
        self.buf_bytes += t.numel() * t.element_size()
        if self.buf_bytes >= self.max:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        write_safetensors(self.folder / name, self.buf, self.metadata)
        self.shards.append((name, list(self.buf)))
        self.total += self.buf_bytes
        self.buf, self.buf_bytes = {}, 0

    def close(self) -> None:
        """Rename shards to the Hugging Face names and write the index when sharded."""
        self.flush()
        n = len(self.shards)
        if n == 1:
            os.replace(self.folder / self.shards[0][0], self.folder / "model.safetensors")
            return
        weight_map = {}
        for i, (tmp, names) in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.folder / tmp, self.folder / final)
            weight_map.update({k: final for k in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


class OutputExistsError(LlmpressError, FileExistsError):
    pass


# Written into every output folder llmpress publishes (checkpoints, eval, bench and run folders):
# `--overwrite` replaces only folders that carry it, so a mistyped --output never deletes the user's files.
OUTPUT_MARKER = ".llmpress-output"
# Folders written before the marker existed are recognised by their record file.
_LEGACY_RECORDS = ("llmpress_compress.json", "eval.json", "bench.json", "run.json")


def umask_mode(mode: int = 0o777) -> int:
    """`mode` less the process umask: what mkdir would have given (mkdtemp always gives 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder in `parent` with the permissions a plain mkdir gives, so that once renamed
    into place another user or a container can read it (tempfile.mkdtemp makes it 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, umask_mode())
    return tmp


def mark_output(folder: Path) -> None:
    (folder / OUTPUT_MARKER).write_text("written by llmpress; `--overwrite` may replace this folder\n")


def check_replaceable(out: Path) -> None:
    """Refuse to replace `out` unless it is empty or llmpress wrote it (the marker, or a legacy record)."""
    if not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is not a folder; --overwrite replaces only folders "
                                "llmpress wrote: pick another --output")
    entries = sorted(p.name for p in out.iterdir())
    if not entries or any((out / n).is_file() for n in (OUTPUT_MARKER, *_LEGACY_RECORDS)):
        return
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise OutputExistsError(f"output {out} was not written by llmpress (it holds {shown}; no {OUTPUT_MARKER}): "
                            "--overwrite replaces only folders llmpress wrote; pick another --output or move it away")


@contextmanager
def atomic_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `output`; on success mark it as llmpress's and rename it into
    place. An existing output is kept unless `overwrite` and llmpress wrote it; on failure nothing is
    left behind."""
    out = Path(output).expanduser().resolve()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"output {out} already exists; pass --overwrite to replace it or pick another --output")
        check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(out.parent, f".{out.name}.tmp-")
    except OSError as e:
        raise CheckpointError(f"cannot write output {out} ({e.strerror}); pick a --output in a folder you can write") from None
    try:
        yield tmp
        mark_output(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, chat template, generation config: everything but weights and config.json."""
    for p in src.iterdir():
        if not p.is_file() or p.suffix in (".safetensors", ".bin", ".pt", ".gguf", ".pth"):
            continue
        if p.name in ("config.json", WEIGHTS_INDEX, "recipe.yaml") or p.name.startswith("."):
            continue
        shutil.copy2(p, dst / p.name)
