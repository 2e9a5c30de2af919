"""A scheduled step flattened into the model's batch (engine/batch.py): rows, positions, KV-cache slots,
attention segments and the rows whose logits the step reads, for a mixed step of a decode, a middle
prefill chunk, a last prefill chunk and a chunk that wants prompt logprobs."""
from __future__ import annotations

from llmpress.engine.batch import Span, prefill_one, prepare, slot
from llmpress.engine.sampling import SamplingParams
from llmpress.engine.scheduler import Scheduled, Sequence

BS = 4  # block size


def seq(prompt: list[int], out: list[int], table: list[int], computed: int, **params) -> Sequence:
    s = Sequence("r", 0, prompt, SamplingParams(**params), 0.0, output_ids=list(out), block_table=table)
    s.num_computed = computed
    return s


def test_slot_is_block_times_size_plus_offset():
    assert [slot([7, 2], p, BS) for p in (0, 3, 4, 6)] == [28, 31, 8, 10]


def test_mixed_step():
    decode = seq([1, 2, 3], [4, 5], [9, 3], computed=4)  # 5 tokens, 4 cached: position 4 is new
    middle = seq(list(range(10, 20)), [], [0, 1, 2], computed=0)  # chunk of 6 of a 10-token prompt
    last = seq([30, 31, 32, 33, 34], [], [5, 6], computed=3)  # the last 2 prompt tokens: samples
    scored = seq([40, 41, 42], [], [8], computed=0, prompt_logprobs=1)  # whole prompt, logprobs of every row
    step = prepare([Scheduled(decode, 1), Scheduled(middle, 6), Scheduled(last, 2), Scheduled(scored, 3)], BS)
    assert step.ids == [5, *range(10, 16), 33, 34, 40, 41, 42]
    assert step.positions == [4, 0, 1, 2, 3, 4, 5, 3, 4, 0, 1, 2]
    assert step.slots == [3 * BS + 0, 0, 1, 2, 3, 4, 5, 5 * BS + 3, 6 * BS + 0, 32, 33, 34]
    assert [(s.start, s.n, s.ctx_len, s.block_table) for s in step.segments] == [
        (0, 1, 5, [9, 3]), (1, 6, 6, [0, 1, 2]), (7, 2, 5, [5, 6]), (9, 3, 3, [8])]
    # the decode and the last chunk sample from their final row; the middle chunk needs no logits;
    # the scored prompt needs all three of its rows
    assert step.logit_rows == [0, 8, 9, 10, 11]
    assert step.spans == [Span(0, 1, False), Span(1, 0, False), Span(1, 1, False), Span(2, 3, True)]
    assert not step.all_decode
    meta = step.meta("cpu")
    assert meta.positions.tolist() == step.positions and meta.slot_mapping.tolist() == step.slots
    assert meta.decode_rows.tolist() == [0] and [s.n for s in meta.prefill] == [6, 2, 3]


def test_all_decode_and_one_prompt():
    a, b = seq([1, 2], [3], [4], computed=2), seq([5], [6, 7], [1], computed=2)
    step = prepare([Scheduled(a, 1), Scheduled(b, 1)], BS)
    assert step.all_decode and step.logit_rows == [0, 1] and step.meta("cpu").all_decode
    meta = prefill_one([3, 1], 6, BS, "cpu")
    assert meta.slot_mapping.tolist() == [12, 13, 14, 15, 4, 5] and meta.max_position == 5 and not meta.all_decode
