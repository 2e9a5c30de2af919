"""The CUDA-graph decode step's static, padded path (run eagerly here: no GPU in CI) computes the
same logits as an ordinary decode step, and padding rows never touch a sequence's cache."""
from __future__ import annotations

import pytest
import torch

from llmpress.engine import cache as kvcache
from llmpress.engine.cuda_graphs import DecodeGraphs
from llmpress.engine.loader import load_model
from llmpress.engine.model import AttnSegment, BatchMeta


def _prefill(model, kv, blocks, prompts):
    """Prefill each prompt alone; returns the block tables."""
    bs = blocks.block_size
    tables = []
    for ids in prompts:
        table: list[int] = []
        blocks.grow(table, len(ids) + 1)  # room for the decode token too
        n = len(ids)
        meta = BatchMeta.build(list(range(n)), [table[p // bs] * bs + p % bs for p in range(n)], [AttnSegment(0, n, n, table)])
        model.forward(torch.tensor(ids), meta, kv)
        tables.append(table)
    return tables


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_static_padded_decode_equals_ordinary_decode(arch, tiny_llama, arch_models):
    """gemma3: its first layer's window (8) binds for two of the three sequences, so the static step must
    take the windowed attention too."""
    model = load_model(tiny_llama if arch == "llama" else arch_models(arch))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, model.cfg.vocab_size, (n,), generator=g).tolist() for n in (5, 17, 33)]
    nxt = torch.randint(0, model.cfg.vocab_size, (3,), generator=g).tolist()

    def fresh():
        kv, blocks = kvcache.allocate(model.cfg, 8 << 20, 16, torch.float32, "cpu", reserve=1)
        return kv, blocks, _prefill(model, kv, blocks, prompts)

    # ordinary step: BatchMeta over the three decode rows
    kv, blocks, tables = fresh()
    bs = blocks.block_size
    pos = [len(p) for p in prompts]
    slots = [t[p // bs] * bs + p % bs for t, p in zip(tables, pos)]
    segs = [AttnSegment(i, 1, p + 1, t) for i, (t, p) in enumerate(zip(tables, pos))]
    ref = model.logits(model.forward(torch.tensor(nxt), BatchMeta.build(pos, slots, segs), kv))
    ref_cache = [(layer.k.clone(), layer.v.clone()) for layer in kv]

    # static step: padded to 4 rows, the fourth writing to the scratch block
    kv, blocks, tables = fresh()
    scratch = blocks.num_blocks
    graphs = DecodeGraphs(model, kv, [1, 4], max_blocks=8, scratch_block=scratch, max_model_len=128)
    for layer in kv:  # poison the scratch block: padding must overwrite what it reads
        layer.k[scratch].fill_(float("nan"))
        layer.v[scratch].fill_(float("nan"))
    out = graphs.run(nxt, pos, slots, tables, [p + 1 for p in pos])

    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    written = torch.tensor([t[q // bs] * bs + q % bs for t, p in zip(tables, pos) for q in range(p + 1)])
    for (k, v), layer in zip(ref_cache, kv):  # every sequence's written slots hold the same K/V
        flat = layer.k.flatten(0, 1), layer.v.flatten(0, 1)
        torch.testing.assert_close(flat[0][written], k.flatten(0, 1)[written])
        torch.testing.assert_close(flat[1][written], v.flatten(0, 1)[written])
        assert torch.isfinite(layer.k[scratch, 0]).all()  # the padding row wrote its slot


def test_single_row_uses_smallest_size(tiny_llama):
    model = load_model(tiny_llama)
    kv, blocks = kvcache.allocate(model.cfg, 8 << 20, 16, torch.float32, "cpu", reserve=1)
    (table,) = _prefill(model, kv, blocks, [[1, 2, 3]])
    graphs = DecodeGraphs(model, kv, [1, 4], max_blocks=8, scratch_block=blocks.num_blocks, max_model_len=128)
    out = graphs.run([5], [3], [table[0] * 16 + 3], [table], [4])
    assert out.shape == (1, model.cfg.vocab_size) and torch.isfinite(out).all()
