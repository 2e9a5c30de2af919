"""Continuous batching with chunked prefill (Agrawal et al. 2024, Sarathi-Serve).

Every step has a token budget (`max_num_batched_tokens`). Running sequences that are
decoding take one token each first, so a long prompt never stalls them; what is left
of the budget goes to prefill chunks, of sequences already admitted and then of new
ones. A new sequence is admitted only when the KV cache can hold its whole prompt, so
a request that does not fit waits in line instead of failing. When a decoding
sequence needs a block and none is free, the newest running sequence is preempted:
its blocks are freed and it is recomputed later (vLLM's recompute preemption).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from .cache import BlockManager
from .sampling import SamplingParams


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    request_id: str
    index: int  # which of the request's n samples
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    status: Status = Status.WAITING
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    text: str = ""
    cumulative_logprob: float = 0.0
    logprobs: list[dict] | None = None
    prompt_logprobs: list[dict | None] | None = None
    generator: torch.Generator | None = None
    first_token_time: float | None = None
    num_preemptions: int = 0
    detok: Any = None  # the engine's IncrementalDetokenizer of output_ids, made at the first token

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def token(self, i: int) -> int:
        p = len(self.prompt_ids)
        return self.prompt_ids[i] if i < p else self.output_ids[i - p]

    @property
    def remaining(self) -> int:
        """New tokens to feed before the next sample (1 while decoding)."""
        return self.num_tokens - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass
class Scheduled:
    seq: Sequence
    n: int  # new tokens this step

    @property
    def samples(self) -> bool:
        """This chunk reaches the sequence's last token, so a new one is sampled."""
        return self.seq.num_computed + self.n == self.seq.num_tokens


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def finish(self, seq: Sequence, reason: str, stop_reason: int | str | None = None) -> None:
        seq.status, seq.finish_reason, seq.stop_reason = Status.FINISHED, reason, stop_reason
        self.blocks.release(seq.block_table)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        seq.num_computed, seq.status = 0, Status.WAITING
        seq.num_preemptions += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    def schedule(self) -> list[Scheduled]:
        budget = self.budget
        out: list[Scheduled] = []
        # 1. decodes, oldest first; make room by preempting the newest when the cache is full
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or seq.remaining != 1:
                continue
            while not self.blocks.can_hold(seq.block_table, seq.num_tokens):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING and budget > 0:
                self.blocks.grow(seq.block_table, seq.num_tokens)
                out.append(Scheduled(seq, 1))
                budget -= 1
        # 2. prefill chunks of admitted sequences (their blocks were reserved on admission)
        for seq in self.running:
            if budget <= 0:
                break
            if seq.remaining > 1:
                n = min(seq.remaining, budget)
                out.append(Scheduled(seq, n))
                budget -= n
        # 3. admit waiting sequences, first come first served, while prompt and seat fit
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_hold(seq.block_table, seq.num_tokens):
                break
            self.waiting.popleft()
            self.blocks.grow(seq.block_table, seq.num_tokens)
            seq.status = Status.RUNNING
            self.running.append(seq)
            n = min(seq.remaining, budget)
            out.append(Scheduled(seq, n))
            budget -= n
        return out
