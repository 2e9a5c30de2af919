"""Paged KV cache (Kwon et al. 2023, vLLM's PagedAttention): fixed-size blocks in one
pool per layer, a free list, and a block table per sequence.

The pool is sized from a byte budget, so the number of sequences that fit depends on
how long they are, not on a worst-case max_model_len reservation per sequence.
"""
from __future__ import annotations

import torch

from .model import KVLayer, ModelConfig


def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """K and V of every layer for one token."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * torch.empty(0, dtype=dtype).element_size()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_hold(self, table: list[int], num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(table) <= len(self.free)

    def grow(self, table: list[int], num_tokens: int) -> None:
        """Extend `table` in place so it covers `num_tokens` tokens."""
        need = self.blocks_for(num_tokens) - len(table)
        if need > len(self.free):
            raise MemoryError("KV cache is full")
        for _ in range(need):
            table.append(self.free.pop())

    def release(self, table: list[int]) -> None:
        self.free.extend(reversed(table))
        table.clear()

    @property
    def num_free(self) -> int:
        return len(self.free)


def allocate(cfg: ModelConfig, budget_bytes: int, block_size: int, dtype: torch.dtype, device: str,
             reserve: int = 0) -> tuple[list[KVLayer], BlockManager]:
    """One [num_blocks, block_size, KVH, D] pool per layer for K and for V. The last `reserve` blocks are
    kept out of the manager: scratch space (CUDA-graph padding rows write their K/V there)."""
    per_block = bytes_per_token(cfg, dtype) * block_size
    num_blocks = budget_bytes // per_block
    if num_blocks < 1 + reserve:
        raise ValueError(
            f"KV cache budget {budget_bytes} bytes holds no block of {block_size} tokens "
            f"({per_block} bytes); raise kv_cache_memory"
        )
    shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
    # empty, not zeros: pages are only touched (and counted in RSS) as blocks fill;
    # every read is bounded by a sequence's context length, so garbage is never seen.
    layers = [KVLayer(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
              for _ in range(cfg.num_layers)]
    return layers, BlockManager(num_blocks - reserve, block_size)
