"""Decode steps replayed from CUDA graphs (as nano-vllm's model_runner and vLLM's CUDA graph runner do).

A decode step of the card's 8B model launches ~400 small kernels (norms, rotary, attention, four
GEMVs per layer), each costing a few microseconds of Python and launch time, while the GPU needs
only about 1 ms to read the int4 weights: eager decode is bound by the host. Each step of B
single-token sequences is therefore captured once per batch size in `sizes` over static input
buffers, and replayed with one launch.

A batch of B rows runs the smallest captured size >= B. Rows past B are padding: token 0 at
position 0, whose K/V go to a scratch block that the block manager never hands out (the engine
keeps it back), attending to that one slot only. Their logits are computed and dropped.

`DecodeGraphs.run` on a device without CUDA graphs (the CPU) runs the same static step eagerly,
so tests compare the padded static path with the ordinary one on any machine.
"""
from __future__ import annotations

import torch

from .model import BatchMeta, KVLayer, Model


class DecodeGraphs:
    def __init__(self, model: Model, kv: list[KVLayer], sizes: list[int], max_blocks: int, scratch_block: int,
                 max_model_len: int):
        """sizes: the batch sizes to capture; max_blocks: block-table width (max_model_len / block_size,
        rounded up); scratch_block: a KV block no sequence owns, written by padding rows."""
        self.model, self.kv = model, kv
        self.sizes = sorted(set(sizes))
        self.block_size = kv[0].block_size
        self.scratch_slot = scratch_block * self.block_size
        b, dev = self.sizes[-1], model.device
        self.input_ids = torch.zeros(b, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(b, dtype=torch.int64, device=dev)
        self.slots = torch.full((b,), self.scratch_slot, dtype=torch.int64, device=dev)
        self.tables = torch.full((b, max_blocks), scratch_block, dtype=torch.int32, device=dev)
        self.lens = torch.ones(b, dtype=torch.int32, device=dev)
        # rope tables must not move after capture: cover every position a sequence can reach now
        model.reserve_rope(max_model_len)
        self.max_position = max_model_len - 1  # what the static step tells layers: a window may bind (Layer.forward)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # size -> the captured output buffer [size, vocab]

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def _step(self, b: int) -> torch.Tensor:
        """The static decode step over the first b rows of the buffers -> float32 logits [b, vocab]."""
        meta = BatchMeta(self.positions[:b], self.slots[:b], [], decode_tables=self.tables[:b],
                         decode_lens=self.lens[:b], all_decode=True, max_position=self.max_position)
        return self.model.logits(self.model.forward(self.input_ids[:b], meta, self.kv))

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first so the smaller graphs share its memory pool."""
        pool = None
        for b in reversed(self.sizes):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside the graph: Triton compiles, cuBLAS picks kernels
                for _ in range(2):
                    self._step(b)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.logits[b] = self._step(b)
            pool = g.pool()
            self.graphs[b] = g
        torch.cuda.synchronize()

    @torch.inference_mode()
    def run(self, ids: list[int], positions: list[int], slots: list[int], tables: list[list[int]],
            lens: list[int]) -> torch.Tensor:
        """One decode step of B = len(ids) sequences -> float32 logits [B, vocab] (a view: read it
        before the next run). tables: each sequence's block table (at most max_blocks long)."""
        n = len(ids)
        b = next(s for s in self.sizes if s >= n)
        width = self.tables.shape[1]
        host = torch.full((b, width), self.scratch_slot // self.block_size, dtype=torch.int32)
        for i, t in enumerate(tables):
            host[i, : len(t)] = torch.tensor(t, dtype=torch.int32)
        pad = b - n
        self.input_ids[:b].copy_(torch.tensor(ids + [0] * pad), non_blocking=True)
        self.positions[:b].copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        self.slots[:b].copy_(torch.tensor(slots + [self.scratch_slot] * pad), non_blocking=True)
        self.tables[:b].copy_(host, non_blocking=True)
        self.lens[:b].copy_(torch.tensor(lens + [1] * pad, dtype=torch.int32), non_blocking=True)
        if b in self.graphs:
            self.graphs[b].replay()
            return self.logits[b][:n]
        return self._step(b)[:n]  # no graph (CPU, or capture not run): the same static step, eagerly
