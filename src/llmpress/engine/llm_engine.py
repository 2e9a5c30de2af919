"""LLMEngine: requests in, RequestOutputs out, one `step()` at a time.

A step schedules (decodes + prefill chunks), runs the model once over the flattened
batch, samples where a chunk reached a sequence's last token, detokenises and checks
stop conditions. The server drives `step()` from a loop; `LLM.generate` runs it to
completion.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields

import psutil
import torch

from .. import plan
from ..models import check_max_model_len, resolve_model
from . import cache as kvcache
from . import extension
from .cuda_graphs import DecodeGraphs
from .detokenizer import IncrementalDetokenizer
from .loader import load_model
from .batch import prefill_one, prepare
from .model import Model
from .sampling import SamplingParams, apply_penalties, has_penalties, sample, top_logprobs
from .scheduler import Scheduler, Sequence


@dataclass
class Logprob:
    logprob: float
    rank: int
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EngineConfig:
    model: str = "default"
    dtype: str = "auto"  # auto: float32 on CPU (fastest here), bfloat16 on CUDA
    # CPU only: the activations' dtype in the dequantize + GEMM path (prefill, large batches). auto: dtype's.
    # bfloat16 in a float32 engine: 2-3x faster prefill where the CPU multiplies bf16 natively, as GPUs round.
    prefill_dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    kv_cache_memory_bytes: int | None = None  # None: CPU min(2 GiB, 1/4 of available RAM); CUDA see below
    block_size: int = 16
    device: str = "cpu"
    seed: int = 0
    # CUDA only, as in vLLM: the fraction of the GPU's memory the engine may fill (weights, activations and
    # KV cache); the KV cache gets what is left of it after loading. And: never capture CUDA graphs.
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False

    @classmethod
    def from_args(cls, model: str, **kwargs) -> "EngineConfig":
        """The one builder of an engine's config from keyword arguments: LLM(...) (so generate, chat, eval)
        and serve. Unknown names are refused; None means not given (the field's default)."""
        known = {f.name for f in fields(cls)} - {"model"}
        if unknown := sorted(set(kwargs) - known):
            raise TypeError(f"LLM() / the engine got unknown arguments {unknown}; known: {sorted(known)}")
        return cls(model=str(model), **{k: v for k, v in kwargs.items() if v is not None})


DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16}


# Decode batch sizes captured as CUDA graphs (up to max_num_seqs), as vLLM's default list starts.
GRAPH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class LLMEngine:
    def __init__(self, config: EngineConfig, model: Model | None = None, tokenizer=None):
        """model / tokenizer: an already built Model and its tokenizer (benchmarks that make weights in
        memory); otherwise both are loaded from config.model."""
        from transformers import AutoTokenizer

        self.config = c = config
        if c.device not in ("cpu", "cuda") and not c.device.startswith("cuda:"):
            raise ValueError(f"device={c.device!r}: choose cpu or cuda")
        if c.device != "cpu" and not torch.cuda.is_available():
            raise ValueError(f"device={c.device!r} but no CUDA GPU is visible; use device='cpu'")
        if c.dtype != "auto" and c.dtype not in DTYPES:
            raise ValueError(f"dtype={c.dtype!r}: choose auto, {', '.join(DTYPES)}")
        if not 0 < c.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={c.gpu_memory_utilization}: must be in (0, 1]")
        self.dtype = DTYPES.get(c.dtype) or (torch.float32 if c.device == "cpu" else torch.bfloat16)
        self.device = torch.device(c.device)
        if c.prefill_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"prefill_dtype={c.prefill_dtype!r}: choose auto, float32 or bfloat16")
        prefill = DTYPES.get(c.prefill_dtype, self.dtype)
        if prefill != self.dtype and c.device != "cpu":
            raise ValueError(f"prefill_dtype={c.prefill_dtype!r}: on a GPU every GEMM runs in the engine's dtype "
                             f"({self.dtype}); set dtype instead, or leave prefill_dtype at auto")
        if model is None:
            self.path = resolve_model(c.model)
            check_max_model_len(self.path, c.max_model_len)
            if c.device == "cpu":  # fail now with the numbers, not OOM-killed while loading
                plan.check_engine(self.path, c.kv_cache_memory_bytes, c.max_num_batched_tokens, c.max_num_seqs,
                                  self.dtype.itemsize, extension.available())
            self.model = load_model(self.path, self.dtype, self.device)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        else:
            self.path, self.model, self.tokenizer = None, model, tokenizer
        self.cfg = self.model.cfg
        self.model.set_prefill_dtype(prefill)
        graphs = self.device.type == "cuda" and not c.enforce_eager
        self.kv, self.blocks = kvcache.allocate(self.cfg, self._kv_budget(), c.block_size, self.dtype, c.device,
                                                reserve=1 if graphs else 0)
        capacity = self.blocks.num_blocks * c.block_size
        limit = c.max_model_len or self.cfg.max_position_embeddings
        if c.max_model_len and c.max_model_len > capacity:
            raise ValueError(
                f"max_model_len={c.max_model_len} needs more KV cache than the budget holds "
                f"({capacity} tokens); raise kv_cache_memory_bytes or lower max_model_len"
            )
        self.max_model_len = min(limit, capacity)
        self.scheduler = Scheduler(self.blocks, c.max_num_seqs, max(c.max_num_batched_tokens, 1))
        self.eos_ids = self._eos_ids()
        self.requests: dict[str, list[Sequence]] = {}
        self.prompts: dict[str, str | None] = {}
        self.stats = {"prompt_tokens": 0, "generation_tokens": 0, "steps": 0, "preemptions": 0}
        self.graphs: DecodeGraphs | None = None
        if graphs:
            sizes = [b for b in GRAPH_SIZES if b < c.max_num_seqs] + [c.max_num_seqs]
            self.graphs = DecodeGraphs(self.model, self.kv, sizes, -(-self.max_model_len // c.block_size),
                                       self.blocks.num_blocks, self.max_model_len)
            self.graphs.capture()

    def _kv_budget(self) -> int:
        """Bytes for the KV cache. CPU: min(2 GiB, 1/4 of available RAM). CUDA, as vLLM: what is left of
        gpu_memory_utilization x the GPU's memory after the weights, less room for one step's activations
        (max_num_batched_tokens rows of the widest intermediate and the logits, float32)."""
        c = self.config
        if c.kv_cache_memory_bytes:
            return c.kv_cache_memory_bytes
        if self.device.type == "cpu":
            return min(2 << 30, psutil.virtual_memory().available // 4)
        free, total = torch.cuda.mem_get_info(self.device)
        cfg = self.cfg
        step = c.max_num_batched_tokens * 4 * (2 * cfg.intermediate_size + 6 * cfg.hidden_size + cfg.vocab_size)
        budget = int(c.gpu_memory_utilization * total) - (total - free) - 2 * step - (512 << 20)
        if budget <= 0:
            raise ValueError(
                f"gpu_memory_utilization={c.gpu_memory_utilization} of {total / 2**30:.1f} GiB leaves no room for a KV "
                f"cache after the weights ({(total - free) / 2**30:.1f} GiB in use); raise it or set kv_cache_memory_bytes"
            )
        return budget

    def _eos_ids(self) -> set[int]:
        ids = set(self.cfg.eos_token_ids)
        gen = None if self.path is None else self.path / "generation_config.json"
        if gen is not None and gen.is_file():
            e = json.loads(gen.read_text()).get("eos_token_id")
            ids |= set(e if isinstance(e, list) else [] if e is None else [e])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    # -- requests -------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int] | dict) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            prompt = prompt.get("prompt")
        if isinstance(prompt, str):
            return prompt, self.tokenizer(prompt).input_ids
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise TypeError(f"prompt must be a string, a list of token ids or {{'prompt_token_ids': [...]}}, got {type(prompt).__name__}")

    def add_request(self, request_id: str, prompt: str | list[int] | dict, params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        text, ids = self.tokenize(prompt)
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        if not ids:
            raise ValueError("prompt is empty: give at least one token")
        if bad := [t for t in ids if not 0 <= t < self.cfg.vocab_size]:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.cfg.vocab_size})")
        if bad := [t for t in params.stop_token_ids if t >= self.cfg.vocab_size]:
            raise ValueError(f"stop_token_ids {bad[:5]} are outside the vocabulary [0, {self.cfg.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt is {len(ids)} tokens but max_model_len is {self.max_model_len}: "
                "shorten the prompt or raise max_model_len"
            )
        now = time.time()
        seqs = []
        for i in range(params.n):
            gen = None
            if params.seed is not None:
                gen = torch.Generator().manual_seed(params.seed + i)
            seq = Sequence(request_id, i, ids, params, now, generator=gen)
            if params.logprobs is not None:
                seq.logprobs = []
            seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = seqs
        self.prompts[request_id] = text

    def abort_request(self, request_id: str) -> None:
        for seq in self.requests.pop(request_id, []):
            if not seq.finished:
                self.scheduler.finish(seq, "abort")
        self.prompts.pop(request_id, None)

    @torch.inference_mode()
    def prompt_logits(self, prompt_ids: list[int], last_only: bool = False) -> torch.Tensor:
        """float32 logits [T, V] (or [1, V] with `last_only`) of one prompt, prefilled in a
        single chunk outside the scheduler. Call it between steps, not during: it borrows
        free KV blocks and returns them."""
        n = len(prompt_ids)
        if not 0 < n <= self.max_model_len:
            raise ValueError(f"prompt is {n} tokens; it must be 1..{self.max_model_len}")
        table: list[int] = []
        if not self.blocks.can_hold(table, n):
            raise RuntimeError(f"KV cache has room for {self.blocks.num_free * self.blocks.block_size} tokens, not {n}; "
                               "score between generate() calls or raise kv_cache_memory_bytes")
        self.blocks.grow(table, n)
        try:
            meta = prefill_one(table, n, self.blocks.block_size, self.device)
            hidden = self.model.forward(torch.tensor(prompt_ids, dtype=torch.long), meta, self.kv)
            return self.model.logits(hidden[-1:] if last_only else hidden).float().cpu()
        finally:
            self.blocks.release(table)

    def next_token_logprobs(self, prompt_ids: list[int]) -> torch.Tensor:
        """Log-probabilities [V] of the token after `prompt_ids`: scores every one-token
        continuation of a context (multiple-choice evaluation) from one prefill."""
        return torch.log_softmax(self.prompt_logits(prompt_ids, last_only=True)[0], -1)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- one step ---------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if not batch:
            if self.scheduler.waiting and not self.scheduler.running:
                seq = self.scheduler.waiting[0]  # cannot fit even alone: fail it, don't spin
                self.scheduler.finish(seq, "length")
                return self._outputs({seq.request_id})
            return []
        self.stats["steps"] += 1
        flat = prepare(batch, self.config.block_size)
        graphed = self.graphs is not None and flat.all_decode and len(batch) <= self.graphs.max_batch
        if graphed:  # every row a single-token decode: replay the captured step, logits of every row
            all_logits = self.graphs.run(flat.ids, flat.positions, flat.slots, [s.block_table for s in flat.segments],
                                         [s.ctx_len for s in flat.segments])
        else:
            hidden = self.model.forward(flat.input_ids(), flat.meta(self.device), self.kv)
        rows = flat.logit_rows
        if not rows:
            logits = None
        elif graphed:
            logits = all_logits[torch.tensor(rows, device=self.device)].cpu()
        else:  # sampling and logprobs run on the host: one copy of the rows' logits per step
            logits = self.model.logits(hidden[torch.tensor(rows, device=self.device)]).cpu()
        touched: set[str] = set()
        for s, span in zip(batch, flat.spans):
            seq, samples = s.seq, s.samples  # read before num_computed moves
            r, k = span.first, span.n
            if span.prompt:
                self._prompt_logprobs(seq, logits[r : r + k], seq.num_computed)
            seq.num_computed += s.n
            if samples:
                self._append(seq, logits[r + k - 1])
                touched.add(seq.request_id)
        return self._outputs(touched)

    def _prompt_logprobs(self, seq: Sequence, logits: torch.Tensor, first: int) -> None:
        """Row j predicts token first+j+1; record logprobs for the prompt positions."""
        if seq.prompt_logprobs is None:
            seq.prompt_logprobs = [None]
        lp = torch.log_softmax(logits.float(), -1)
        p = len(seq.prompt_ids)
        for j in range(logits.shape[0]):
            pos = first + j + 1
            if pos < p and len(seq.prompt_logprobs) == pos:
                seq.prompt_logprobs.append(self._logprob_dict(lp[j], seq.prompt_ids[pos], seq.params.prompt_logprobs))

    def _logprob_dict(self, lp: torch.Tensor, token: int, k: int) -> dict[int, Logprob]:
        return {t: Logprob(v, rank, self.tokenizer.decode([t])) for t, (v, rank) in top_logprobs(lp, token, k).items()}

    def _append(self, seq: Sequence, logits: torch.Tensor) -> None:
        p = seq.params
        raw = logits.float()
        ban = list((self.eos_ids if not p.ignore_eos else set()) | set(p.stop_token_ids)) if len(seq.output_ids) < p.min_tokens else []
        x = raw
        if has_penalties(p) or ban:  # raw stays as it is for the logprobs
            x = apply_penalties(raw.clone(), p, seq.prompt_ids, seq.output_ids)
            if ban:
                x[torch.tensor(ban)] = float("-inf")
        token = sample(x, p, seq.generator)
        if seq.first_token_time is None:
            seq.first_token_time = time.time()
        seq.output_ids.append(token)
        self.stats["generation_tokens"] += 1
        if seq.logprobs is not None or p.logprobs is not None:
            lp = torch.log_softmax(raw, -1)
            seq.cumulative_logprob += float(lp[token])
            if seq.logprobs is not None:
                seq.logprobs.append(self._logprob_dict(lp, token, p.logprobs))
        self._check_stop(seq, token)

    def _check_stop(self, seq: Sequence, token: int) -> None:
        p = seq.params
        n_out = len(seq.output_ids)
        prev = len(seq.text)
        stopped_by_token = (token in self.eos_ids and not p.ignore_eos) or token in p.stop_token_ids
        if seq.detok is None:
            seq.detok = IncrementalDetokenizer(self.tokenizer, p.skip_special_tokens)
        if not stopped_by_token:  # the stop token itself is not part of the text
            seq.text = seq.detok.add(token)
        if n_out >= p.min_tokens and stopped_by_token:
            reason = None if token in self.eos_ids and token not in p.stop_token_ids else token
            seq.text = seq.detok.flush()
            return self.scheduler.finish(seq, "stop", reason)
        if p.stop_strings and n_out >= p.min_tokens:
            longest = max(map(len, p.stop_strings))
            lo = max(0, prev - longest)
            hits = [(seq.text.find(s, lo), s) for s in p.stop_strings]
            hits = [(i, s) for i, s in hits if i >= 0]
            if hits:
                i, s = min(hits)
                seq.text = seq.text[: i + len(s)] if p.include_stop_str_in_output else seq.text[:i]
                return self.scheduler.finish(seq, "stop", s)
        if (p.max_tokens is not None and n_out >= p.max_tokens) or seq.num_tokens >= self.max_model_len:
            seq.text = seq.detok.flush()
            self.scheduler.finish(seq, "length")

    # -- outputs ----------------------------------------------------------------------
    def _visible_text(self, seq: Sequence) -> str:
        """Text safe to stream: no half-decoded UTF-8 character, no possible stop-string prefix."""
        t = seq.text
        if seq.finished:
            return t
        while t.endswith("\ufffd"):
            t = t[:-1]
        if seq.params.stop_strings and not seq.params.include_stop_str_in_output:
            hold = max(map(len, seq.params.stop_strings)) - 1
            for k in range(min(hold, len(t)), 0, -1):
                if any(s.startswith(t[-k:]) for s in seq.params.stop_strings):
                    return t[:-k]
        return t

    def _outputs(self, request_ids: set[str]) -> list[RequestOutput]:
        outs = []
        for rid in request_ids:
            seqs = self.requests.get(rid)
            if not seqs:
                continue
            finished = all(s.finished for s in seqs)
            first = seqs[0]
            comps = [
                CompletionOutput(s.index, self._visible_text(s), list(s.output_ids),
                                 s.cumulative_logprob if s.logprobs is not None else None,
                                 s.logprobs, s.finish_reason, s.stop_reason)
                for s in seqs
            ]
            metrics = {"arrival_time": first.arrival, "first_token_time": first.first_token_time,
                       "finished_time": time.time() if finished else None,
                       "preemptions": sum(s.num_preemptions for s in seqs)}
            outs.append(RequestOutput(rid, self.prompts.get(rid), first.prompt_ids, first.prompt_logprobs, comps, finished, metrics))
            if finished:
                self.stats["prompt_tokens"] += len(first.prompt_ids)
                self.requests.pop(rid)
                self.prompts.pop(rid, None)
        return outs
