"""A byte-level BPE tokenizer that covers a config's whole vocabulary, built in about a second, offline.

Design (why): a real 128k vocabulary cannot be trained here (no corpus, minutes of work), but every
property the stack relies on can be had without one:
  - *any text encodes*: the 256 byte tokens of GPT-2's byte-level scheme (Radford et al. 2019) come
    first, so every string falls back to bytes; Llama 3's own pre-tokenizer regex splits words,
    numbers (1-3 digits) and punctuation exactly as the real tokenizer does;
  - *every id decodes*: regular ids are byte strings (a partial UTF-8 sequence decodes to U+FFFD, as
    in every byte-level tokenizer); the rest are special / reserved tokens with names;
  - *token counts of the right order*: the merges are generated, not learned. Tokens are letter
    strings picked best-first by an English letter-frequency score (with and without the leading
    space marker, lower and capitalised), every 1-3 digit number, whitespace runs; each token gets
    a merge for *every* split into two shorter tokens, so BPE's lowest-rank-first merging always
    finds a path to it whichever pair it merges first. English text comes out at ~3 characters per
    token (Llama 3: ~4), so calibration samples and benchmark prompts have realistic lengths;
  - *bos / eos at the config's ids*, DeepSeek-R1-distill's special tokens and chat template (the
    card's model), reserved tokens for the remaining special ids, as Llama 3 lays them out.
"""
from __future__ import annotations

import heapq
import json
import math
from functools import cache
from pathlib import Path

# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Meta-Llama-3-8B, "Split" pre_tokenizer).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
# DeepSeek-R1-Distill-Llama's added tokens; <think> / </think> are not "special" there (they show in text).
CHAT_TOKENS = (("<｜User｜>", True), ("<｜Assistant｜>", True), ("<think>", False), ("</think>", False),
               ("<｜▁pad▁｜>", True))
PAD = "<｜▁pad▁｜>"
# DeepSeek-R1-distill's template without the tool-call branches: the system prompt first, the
# user / assistant turns, an assistant turn's reasoning (before </think>) dropped from history.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{% endif %}{% endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
# English letter frequencies (%), Lewand 2000: the score that orders the generated letter tokens.
_LETTER_FREQ = dict(zip("etaoinshrdlcumwfgypbvkjxqz", (
    12.70, 9.06, 8.17, 7.51, 6.97, 6.75, 6.33, 6.09, 5.99, 4.25, 4.03, 2.78, 2.76, 2.41, 2.36, 2.23, 2.02,
    1.97, 1.93, 1.49, 0.98, 0.77, 0.15, 0.15, 0.10, 0.07)))
_MAX_LETTERS = 8


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE's alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _letter_tokens(count: int) -> list[str]:
    """`count` letter strings (byte-level spelling), best first: log-score = Σ log f(letter), the
    word-start marker 'Ġ' (a space) and a capital first letter priced as extra letters, so short
    common strings ("the", "Ġand", "ing") come before long or rare ones."""
    space = bytes_to_unicode()[ord(" ")]
    letters = sorted(_LETTER_FREQ, key=lambda c: -_LETTER_FREQ[c])
    cost = [-math.log(_LETTER_FREQ[c] / 100) for c in letters]  # ascending
    # Best-first enumeration with two pushes per pop: a heap entry (cost, s, i) stands for
    # s + letters[i]; popping it also offers its first child (+ letters[0]) and its next sibling
    # (letters[i + 1]), both no cheaper, so strings come out in cost order.
    heap = []
    for c in letters:
        for prefix, extra, first in (("", 0.0, c), (space, 1.2, c), ("", 2.5, c.upper()), (space, 3.0, c.upper())):
            heap.append((cost[letters.index(c)] + extra + cost[0], prefix + first, 0))
            heap.append((cost[letters.index(c)] + extra, prefix + first, -1))  # the seed itself
    heapq.heapify(heap)
    out: list[str] = []
    while heap and len(out) < count:
        c, s, i = heapq.heappop(heap)
        if i < 0:  # a seed: one letter, with or without the word-start marker
            if s.startswith(space):
                out.append(s)
            continue
        t = s + letters[i]
        out.append(t)
        if i + 1 < len(letters):
            heapq.heappush(heap, (c - cost[i] + cost[i + 1], s, i + 1))
        if len(t.lstrip(space)) < _MAX_LETTERS:
            heapq.heappush(heap, (c + cost[0], t, 0))
    return out


def _regular_tokens(count: int) -> list[str]:
    """The byte tokens, then generated tokens, `count` in all (ids are assigned in this order)."""
    b2u = bytes_to_unicode()
    toks = [b2u[b] for b in range(256)]
    space, nl, tab = b2u[ord(" ")], b2u[ord("\n")], b2u[ord("\t")]
    extra = [f"{i:d}" for i in range(10, 100)] + [f"{i:02d}" for i in range(10)]  # 2-digit strings
    extra += [f"{i:03d}" for i in range(1000)]  # Llama 3 splits numbers into 1-3 digits
    extra += [space * n for n in range(2, 17)] + [nl * n for n in range(2, 5)] + [tab * n for n in range(2, 5)]
    extra += [space + nl, nl + space * 4, nl + space * 8] + [space + p for p in ".,:;()[]{}=+-*/'\"<>!?#_"]
    seen = set(toks)
    extra = [t for t in dict.fromkeys(extra) if t not in seen]
    toks += extra[: max(0, count - len(toks))]
    if len(toks) < count:
        toks += _letter_tokens(count - len(toks))
    if len(toks) < count:
        raise ValueError(f"cannot generate {count} distinct tokens")
    return toks[:count]


def _merges(tokens: list[str]) -> list[tuple[str, str]]:
    """Every split (a, b) of each multi-character token into two tokens created before it, in
    creation order: BPE merges the lowest-rank adjacent pair first, so with all splits present
    any order of merging reaches the token."""
    have: set[str] = set()
    merges = []
    for t in tokens:
        if len(t) > 1:
            for i in range(1, len(t)):
                a, b = t[:i], t[i:]
                if a in have and b in have:
                    merges.append((a, b))
        have.add(t)
    return merges


def special_layout(vocab_size: int, bos_id: int | None, eos_id: int | None) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) for bos, eos, the chat tokens and reserved ids.

    When bos / eos sit in the vocabulary's top block (Llama 3: 128000 / 128001 of 128256), every id
    from there up is special (named tokens first, then <|reserved_special_token_N|>), as in Llama 3
    and DeepSeek-R1-distill; otherwise the chat tokens take the first free ids after bos / eos."""
    layout: dict[int, tuple[str, bool]] = {}
    if bos_id is not None:
        layout[bos_id] = (BOS, True)
    if eos_id is not None and eos_id not in layout:
        layout[eos_id] = (EOS, True)
    anchors = [i for i in (bos_id, eos_id) if i is not None]
    start = max(anchors) + 1 if anchors else vocab_size - len(CHAT_TOKENS)
    top = min(anchors) >= vocab_size - 1024 if anchors else True
    if top:
        start = min(anchors) if anchors else start
    free = (i for i in range(start, vocab_size) if i not in layout)
    # DeepSeek-R1-distill-Llama numbering: reserved 128002-128010, then the chat tokens at 128011.
    if top and anchors and vocab_size - min(anchors) >= 256:
        free = iter([i for i in range(min(anchors) + 11, vocab_size)] + list(range(min(anchors), min(anchors) + 11)))
        free = (i for i in free if i not in layout)
    for content, special in CHAT_TOKENS:
        i = next(free, None)
        if i is None:
            break
        layout[i] = (content, special)
    if top:
        rest = sorted(i for i in range(min(anchors) if anchors else vocab_size, vocab_size) if i not in layout)
        for n, i in enumerate(rest):
            layout[i] = (f"<|reserved_special_token_{n}|>", True)
    return layout


def tokenizer_json(vocab_size: int, bos_id: int | None, eos_id: int | None) -> dict:
    """tokenizer.json (Hugging Face tokenizers' format) for a `vocab_size` vocabulary."""
    specials = special_layout(vocab_size, bos_id, eos_id)
    regular_ids = [i for i in range(vocab_size) if i not in specials]
    if len(regular_ids) < 256:
        raise ValueError(f"vocab_size {vocab_size} leaves {len(regular_ids)} ids for text; byte-level BPE needs 256")
    tokens = _regular_tokens(len(regular_ids))
    vocab = dict(zip(tokens, regular_ids))
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": s} for i, (c, s) in sorted(specials.items())]
    bos = specials[bos_id][0] if bos_id is not None else None
    single = ([{"SpecialToken": {"id": bos, "type_id": 0}}] if bos else []) + [{"Sequence": {"id": "A", "type_id": 0}}]
    pair = single + ([{"SpecialToken": {"id": bos, "type_id": 1}}] if bos else [])
    pair += [{"Sequence": {"id": "B", "type_id": 1}}]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing", "single": single, "pair": pair,
             "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}} if bos else {}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [list(m) for m in _merges(tokens)]},
    }


def write_tokenizer(folder: Path, vocab_size: int, bos_id: int | None, eos_id: int | None,
                    model_max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template, as vLLM reads it) and
    chat_template.jinja (as transformers 5 writes it) into `folder`."""
    tj = tokenizer_json(vocab_size, bos_id, eos_id)
    (Path(folder) / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False, separators=(",", ":")))
    specials = {t["id"]: t["content"] for t in tj["added_tokens"]}
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # a concrete class: vLLM and transformers 4.x need one
        "bos_token": specials.get(bos_id) if bos_id is not None else None,
        "eos_token": specials.get(eos_id) if eos_id is not None else None,
        "pad_token": PAD if PAD in specials.values() else specials.get(eos_id),
        "add_bos_token": bos_id is not None,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (Path(folder) / "chat_template.jinja").write_text(CHAT_TEMPLATE)
