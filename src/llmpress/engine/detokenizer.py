"""Incremental detokenization: a sequence's text grows with each token without decoding all of it again.

Decoding the whole output at every step costs O(n) per token, O(n^2) per sequence: at the cards' 1536-token
profile that is most of a step's host time. As vLLM's detokenizer does, only a short window of ids is decoded:
`prefix` marks where the window starts (the first id of the last emitted piece), `read` where the ids already
turned into text end. The new text is decode(ids[prefix:]) minus decode(ids[prefix:read]): the window starts on a
token boundary that a full decode also crosses, so byte-level BPE and SentencePiece tokenizers (whose leading-space
handling depends on where decoding starts) give the same concatenation as one full decode. A piece that ends in an
incomplete UTF-8 character ("\ufffd") waits for the next token; `flush` emits it when the sequence ends.
"""
from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def add(self, token: int) -> str:
        """Append one token id; returns the text so far (complete characters only)."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        return self.text

    def flush(self) -> str:
        """The text of every id added, a trailing incomplete character included (as a full decode gives it)."""
        if self.read < len(self.ids):
            before = self._decode(self.ids[self.prefix : self.read])
            self.text += self._decode(self.ids[self.prefix :])[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
        return self.text
