"""SamplingParams (vLLM's fields and defaults) and the sampler that applies them.

Order of logit processing follows vLLM: penalties on the raw logits, then
temperature, then min_p / top_k / top_p truncation, then a draw from the request's
own generator (so `seed` reproduces a request whatever else is in the batch).
Logprobs are reported from the raw model distribution (vLLM's default).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from ..errors import LlmpressError


# generation_config.json keys that become request defaults (vLLM's --generation-config auto)
GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def generation_defaults(folder) -> dict:
    """The sampling defaults a model's generation_config.json sets (vLLM applies them too), with
    max_new_tokens as max_tokens; {} without the file."""
    import json
    from pathlib import Path

    f = Path(folder) / "generation_config.json"
    cfg = json.loads(f.read_text()) if f.is_file() else {}
    out = {k: cfg[k] for k in GENERATION_DEFAULTS if cfg.get(k) is not None}
    if cfg.get("max_new_tokens"):
        out["max_tokens"] = int(cfg["max_new_tokens"])
    return out


class SamplingError(LlmpressError, ValueError):
    """An invalid sampling parameter; the message names the value and the valid range."""


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    stop_strings: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> SamplingError:
            return SamplingError(f"{name}={getattr(self, name)!r}: {why}")

        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "must be a finite number")
        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", "must be an integer >= 1")
        if self.temperature < 0:
            raise bad("temperature", "must be >= 0 (0 means greedy)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if self.top_k == -1:
            self.top_k = 0
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "must be 0 or -1 (off) or a positive integer")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", "must be in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise bad(name, "must be in [-2, 2]")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "must be > 0 (1 means off)")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise bad("max_tokens", "must be a positive integer or None (up to the context length)")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise bad("min_tokens", "must be >= 0 and <= max_tokens")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise bad(name, "must be None or an integer >= 0 (number of top alternatives)")
        if self.stop is None:
            self.stop_strings = []
        elif isinstance(self.stop, str):
            self.stop_strings = [self.stop] if self.stop else []
        elif isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) for s in self.stop):
            self.stop_strings = [s for s in self.stop if s]
        else:
            raise bad("stop", "must be a string, a list of strings or None")
        ids = self.stop_token_ids or []
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise bad("stop_token_ids", "must be a list of non-negative token ids")
        self.stop_token_ids = list(ids)

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5


def has_penalties(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or bool(params.presence_penalty or params.frequency_penalty)


def apply_penalties(
    logits: torch.Tensor, params: SamplingParams, prompt_ids: list[int], output_ids: list[int]
) -> torch.Tensor:
    """logits [V] float32, changed in place. repetition_penalty (Keskar et al. 2019, CTRL) on prompt
    and output tokens; presence/frequency (OpenAI's definition) on output tokens only."""
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long)
        if len(seen):
            v = logits[seen]
            logits[seen] = torch.where(v > 0, v / params.repetition_penalty, v * params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and output_ids:
        ids, counts = torch.tensor(output_ids).unique(return_counts=True)
        logits[ids] -= params.frequency_penalty * counts.float() + params.presence_penalty
    return logits


def truncate(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Mask (to -inf) tokens outside min_p / top_k / top_p. logits [V] already tempered."""
    if params.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token once the mass *before* it already reaches top_p; the top token always stays
        drop = (cum - sorted_logits.softmax(-1)) >= params.top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick one token id from processed logits [V]."""
    if params.greedy:  # max's index is argmax's (the first maximum), in a third of the time on CPU
        return int(logits.max(0).indices)
    logits = truncate(logits / params.temperature, params)
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logprobs: torch.Tensor, token: int, k: int) -> dict[int, tuple[float, int]]:
    """{token_id: (logprob, rank)} for the chosen token and the top-k alternatives
    (rank 1 = most likely), vLLM's Logprob shape."""
    out: dict[int, tuple[float, int]] = {}
    chosen = float(logprobs[token])
    out[token] = (chosen, int((logprobs > logprobs[token]).sum()) + 1)
    if k:
        vals, ids = logprobs.topk(k)
        for r, (v, i) in enumerate(zip(vals.tolist(), ids.tolist()), 1):
            out.setdefault(i, (v, r))
    return out
