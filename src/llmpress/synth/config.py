"""CONFIG argument -> a checked Llama-family config dict: a config.json path (or a folder holding
one), a built-in name (configs/*.json, shipped as package data), or a hub id when online."""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from ..errors import LlmpressError

FAMILY = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


class SynthError(LlmpressError, ValueError):
    """A synth input we refuse before any work; the message names the value, the file and the fix."""


def builtin_names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in resources.files(__package__).joinpath("configs").iterdir()
                  if p.name.endswith(".json"))


def load_config(spec: str) -> tuple[dict, str]:
    """(config dict, where it came from) for a path, a built-in name or (online) a hub id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SynthError(f"config {path}: not valid JSON ({e}); pass a Hugging Face config.json") from None
        return cfg, str(path)
    if spec in builtin_names():
        src = resources.files(__package__).joinpath("configs", f"{spec}.json")
        return json.loads(src.read_text()), f"built-in {spec}"
    known = ", ".join(builtin_names())
    if os.environ.get("HF_HUB_OFFLINE") == "1" or spec.startswith((".", "/", "~")) or spec.endswith(".json"):
        raise SynthError(f"config {spec!r}: no such file, not a built-in ({known}), and hub downloads are off "
                         "(HF_HUB_OFFLINE=1); pass a config.json path or a built-in name")
    try:  # a hub id, online only; never remote code
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(spec, trust_remote_code=False).to_dict()
    except Exception as e:  # noqa: BLE001 - hub errors are many; say what failed
        raise SynthError(f"config {spec!r}: not a file or built-in ({known}) and the hub lookup failed: {e}") from None
    return cfg, f"hub {spec}"


def check_config(cfg: dict, source: str) -> None:
    """Refuse what the stack cannot run: non-Llama-family architectures, missing shape keys."""
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in FAMILY or cfg.get("model_type") not in (None, FAMILY[arch]):
        raise SynthError(
            f"{source}: architecture {arch!r} (model_type {cfg.get('model_type')!r}) is not Llama-family; "
            f"synth writes {', '.join(FAMILY)} configs: pick one of those"
        )
    if missing := [k for k in REQUIRED if not isinstance(cfg.get(k), int) or cfg[k] <= 0]:
        raise SynthError(f"{source}: {', '.join(missing)} missing or not a positive integer; fix the config")
    if cfg.get("hidden_act", "silu") != "silu":
        raise SynthError(f"{source}: hidden_act {cfg['hidden_act']!r}: Llama-family MLPs here are SwiGLU (silu)")
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if heads % kv:
        raise SynthError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    vocab = cfg["vocab_size"]
    for key in ("bos_token_id", "eos_token_id"):
        v = cfg.get(key)
        ids = v if isinstance(v, list) else [v]
        if any(i is not None and not 0 <= i < vocab for i in ids):
            raise SynthError(f"{source}: {key} {v} is outside the vocabulary [0, {vocab}); fix the config")
