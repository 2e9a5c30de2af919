"""synth(): a random-weight checkpoint of a Llama-family config, streamed shard by shard.

Everything is checked first (config, --layers, dtype, output, free disk space); then tensors are
generated one at a time (weights.init_tensor) into a ShardWriter inside an atomic output folder,
so peak memory is the largest tensor (the 1 GB embedding of a 128k x 4096 model) plus one shard,
and a failure leaves nothing behind.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint.shards import ShardWriter, atomic_output_dir
from .config import FAMILY, SynthError, check_config, load_config
from .tokenizer import write_tokenizer
from .weights import InitConfig, init_tensor

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SHARD_BYTES = 512 << 20  # Hugging Face uses ~5 GB shards; smaller ones keep the writer's buffer (peak RSS) small
SIDE_FILES_BYTES = 32 << 20  # tokenizer.json (~7 MB at 128k) and the small JSON files, with room to spare


@dataclass(frozen=True)
class SynthPlan:
    config: dict  # config.json as it will be written
    source: str
    tensors: tuple[tuple[str, tuple[int, ...]], ...]  # (name, shape) in write order
    dtype: torch.dtype
    seed: int

    @property
    def nbytes(self) -> int:
        size = torch.empty(0, dtype=self.dtype).element_size()
        return sum(size * _numel(s) for _, s in self.tensors)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_synth(config: str, layers: int | None = None, seed: int = 0, dtype: str | None = None) -> SynthPlan:
    """Resolve and check everything synth needs; no file is touched."""
    cfg, source = load_config(config)
    check_config(cfg, source)
    depth = cfg["num_hidden_layers"]
    if layers is not None and not (isinstance(layers, int) and 1 <= layers <= depth):
        raise SynthError(f"--layers {layers}: {source} has {depth} layers; give 1 to {depth}")
    name = dtype or cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    if name not in DTYPES:
        raise SynthError(f"--dtype {name!r}: choose {', '.join(DTYPES)}")
    out = dict(cfg)
    out["num_hidden_layers"] = layers or depth
    out["torch_dtype"] = name
    if "dtype" in out:
        out["dtype"] = name
    if isinstance(out.get("layer_types"), list):  # per-layer lists (Qwen2 in transformers 5) follow --layers
        out["layer_types"] = out["layer_types"][: out["num_hidden_layers"]]
    rope = out.get("rope_parameters") or {}
    if "rope_theta" not in out and "rope_theta" in rope:  # vLLM and transformers 4.x read it at the top level
        out["rope_theta"] = rope["rope_theta"]
    out["llmpress_synth"] = {"source": source, "seed": seed, "num_hidden_layers_of_source": depth}
    return SynthPlan(out, source, _shapes(out), DTYPES[name], seed)


def _shapes(cfg: dict) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Parameter names and shapes exactly as transformers defines the architecture (on the meta
    device: no memory), so biases, tied heads and head_dim follow the config like a real model's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in cfg.items() if k not in ("llmpress_synth", "model_type")}
    hf = AutoConfig.for_model(cfg.get("model_type") or FAMILY[cfg["architectures"][0]], **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    return tuple((n, tuple(p.shape)) for n, p in model.named_parameters())


def synth(
    config: str,
    output: str | Path,
    layers: int | None = None,
    seed: int = 0,
    dtype: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Write a random-weight checkpoint of `config` (path, built-in name or hub id) to `output`."""
    t0 = time.time()
    plan = plan_synth(config, layers, seed, dtype)
    out = Path(output).expanduser().resolve()
    if out.exists() and not overwrite:
        raise SynthError(f"output {out} already exists; pass --overwrite to replace it or pick another --output")
    parent = next(p for p in [out, *out.parents] if p.exists())  # the folder the temporary copy lands in
    need = plan.nbytes + SIDE_FILES_BYTES
    free = shutil.disk_usage(parent).free
    if free < need:  # the old output (with --overwrite) is only removed after the new one is complete
        raise SynthError(f"output {out}: needs {need / 1e9:.2f} GB but {parent} has {free / 1e9:.2f} GB free; "
                         "free space, pick another --output, or synthesize fewer --layers")
    cfg = plan.config
    init = InitConfig(cfg["hidden_size"], cfg["llmpress_synth"]["num_hidden_layers_of_source"],
                      float(cfg.get("initializer_range") or 0.02), seed)
    with atomic_output_dir(out, overwrite) as tmp:
        writer = ShardWriter(tmp, shard_bytes)
        bar = tqdm(total=plan.nbytes, desc="synth", unit="B", unit_scale=True, disable=not progress)
        for name, shape in plan.tensors:
            size = _numel(shape) * torch.empty(0, dtype=plan.dtype).element_size()
            if writer.buf_bytes + size > shard_bytes:  # never hold a shard plus a big tensor at once
                writer.flush()
            writer.add(name, init_tensor(name, shape, plan.dtype, init))
            bar.update(size)
        writer.close()
        bar.close()
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        bos, eos = cfg.get("bos_token_id"), cfg.get("eos_token_id")
        eos_first = eos[0] if isinstance(eos, list) else eos
        write_tokenizer(tmp, cfg["vocab_size"], bos, eos_first, cfg.get("max_position_embeddings") or 4096)
        gen = {"bos_token_id": bos, "eos_token_id": eos, "do_sample": True, "temperature": 0.6, "top_p": 0.95}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        stats = {"wall_s": round(time.time() - t0, 2), "bytes": plan.nbytes, "tensors": len(plan.tensors)}
        (tmp / "llmpress_synth.json").write_text(json.dumps({**cfg["llmpress_synth"], **stats}, indent=2) + "\n")
    return out
