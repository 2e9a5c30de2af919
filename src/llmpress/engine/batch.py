"""A scheduled step -> the model's inputs: the scheduler's chunks flattened into one batch of rows
(token ids, positions, KV-cache slots, attention segments) and the rows whose logits the step needs.

This is what nano-vllm's ModelRunner.prepare_prefill / prepare_decode do, for a mixed batch
(decodes and prefill chunks in one step, Sarathi-Serve's chunked prefill).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .model import AttnSegment, BatchMeta
from .scheduler import Scheduled


def slot(block_table: list[int], position: int, block_size: int) -> int:
    """The flat KV-cache slot of a token: its block (from the sequence's table) times the block size
    plus its offset in the block (vLLM's slot_mapping)."""
    return block_table[position // block_size] * block_size + position % block_size


@dataclass
class Span:
    """One scheduled chunk's logits: rows [first, first + n) of the step's logits; `prompt` when they
    are its prompt logprobs (every row predicts the next prompt token), else n is 1 (a sample) or 0."""

    first: int
    n: int
    prompt: bool


@dataclass
class StepBatch:
    ids: list[int] = field(default_factory=list)  # [T] new tokens, chunk after chunk
    positions: list[int] = field(default_factory=list)  # [T]
    slots: list[int] = field(default_factory=list)  # [T] flat KV-cache slot of each new token
    segments: list[AttnSegment] = field(default_factory=list)  # one per chunk
    logit_rows: list[int] = field(default_factory=list)  # hidden rows whose logits are needed
    spans: list[Span] = field(default_factory=list)  # one per chunk, into the logits of logit_rows

    @property
    def all_decode(self) -> bool:
        """Every chunk is a single-token decode (what a CUDA graph's static step replays)."""
        return len(self.ids) == len(self.segments)

    def input_ids(self) -> torch.Tensor:
        return torch.tensor(self.ids)  # [T] int64

    def meta(self, device: torch.device | str) -> BatchMeta:
        return BatchMeta.build(self.positions, self.slots, self.segments, device)


def prepare(batch: list[Scheduled], block_size: int) -> StepBatch:
    """Flatten the scheduler's chunks, in order, into one batch. Read before the step moves any
    sequence's num_computed: each chunk covers positions [num_computed, num_computed + n)."""
    out = StepBatch()
    for s in batch:
        seq, start = s.seq, len(out.ids)
        for p in range(seq.num_computed, seq.num_computed + s.n):
            out.ids.append(seq.token(p))
            out.positions.append(p)
            out.slots.append(slot(seq.block_table, p, block_size))
        out.segments.append(AttnSegment(start, s.n, seq.num_computed + s.n, seq.block_table))
        want_prompt = seq.params.prompt_logprobs is not None and seq.num_computed < len(seq.prompt_ids)
        first = len(out.logit_rows)
        if want_prompt:  # every row predicts the next prompt token
            out.spans.append(Span(first, s.n, True))
            out.logit_rows.extend(range(start, start + s.n))
        elif s.samples:
            out.spans.append(Span(first, 1, False))
            out.logit_rows.append(start + s.n - 1)
        else:
            out.spans.append(Span(first, 0, False))
    return out


def prefill_one(table: list[int], n: int, block_size: int, device: torch.device | str) -> BatchMeta:
    """The metadata of one whole prompt of n tokens, prefilled in a single chunk into `table`'s blocks."""
    return BatchMeta.build(list(range(n)), [slot(table, p, block_size) for p in range(n)],
                           [AttnSegment(0, n, n, table)], device)
