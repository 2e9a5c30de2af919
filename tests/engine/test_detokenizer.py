"""Incremental detokenization gives, after every token, the text a full decode of the tokens so far gives
(complete characters), and decodes only a short window each time."""
from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from llmpress.engine.detokenizer import IncrementalDetokenizer

TEXTS = ["The capital of France is Paris.  Multiple   spaces,\ttabs\nand lines.",
         "naïve café — 東京タワー 🚀🚀 emoji and accents: ça va?", "def f(x):\n    return x ** 2  # code"]


class _Counting:
    """The tokenizer, recording the length of every id list it decodes."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def decode(self, ids, **kw):
        self.lengths.append(len(ids))
        return self.tok.decode(ids, **kw)


@pytest.fixture(scope="module")
def tok(default_model):
    return AutoTokenizer.from_pretrained(default_model)


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_text_equals_full_decode(tok, text):
    ids = tok(text).input_ids
    d = IncrementalDetokenizer(tok)
    for i, t in enumerate(ids):
        got = d.add(t)
        full = tok.decode(ids[: i + 1], skip_special_tokens=True)
        # text waits only while the newest piece ends in an incomplete character
        assert full.startswith(got) and (got == full or full.endswith("\ufffd"))
    assert d.flush() == tok.decode(ids, skip_special_tokens=True)


def test_random_ids_and_special_tokens(tok):
    """Arbitrary ids (byte pieces that split characters, special tokens skipped or kept) end as a full decode."""
    rnd = random.Random(0)
    for skip in (True, False):
        ids = [rnd.randrange(tok.vocab_size) for _ in range(300)] + [tok.eos_token_id] + [rnd.randrange(500) for _ in range(50)]
        d = IncrementalDetokenizer(tok, skip_special_tokens=skip)
        for t in ids:
            d.add(t)
        assert d.flush() == tok.decode(ids, skip_special_tokens=skip)


def test_window_stays_short(tok):
    """Each add decodes a window of a few tokens, not the whole output: the cost per token does not grow."""
    counting = _Counting(tok)
    ids = tok(" ".join(TEXTS) * 20).input_ids
    d = IncrementalDetokenizer(counting)
    for t in ids:
        d.add(t)
    assert len(ids) > 500 and max(counting.lengths) <= 8
