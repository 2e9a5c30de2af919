"""What a benchmark sends: the cards' eight use-case profiles and synthetic prompts of
exact token lengths cut from real text.

The seed cards (the model cards of DeepSeek-R1-Distill-Llama-8B-quantized.w4a16, .w8a8 and
-FP8-dynamic, section "Inference Performance") benchmark eight prompt/output token profiles
with GuideLLM's emulated data. We build each prompt from the Lee news corpus
(gensim test data) so the model reads natural English, and make its length exact under
the tokenizer the server uses (`tokenizer(text).input_ids`, special tokens included, as
vLLM's /v1/completions counts): a token window is decoded, re-encoded, and trimmed or
extended until the count matches. Output length is forced with max_tokens + ignore_eos.
"""
from __future__ import annotations

from dataclasses import dataclass
from ..errors import LlmpressError


@dataclass(frozen=True)
class Profile:
    name: str
    prompt_tokens: int
    output_tokens: int

    @property
    def label(self) -> str:
        return f"{self.prompt_tokens}/{self.output_tokens}"

    def scaled(self, factor: float) -> "Profile":
        if factor == 1:
            return self
        return Profile(self.name, max(1, round(self.prompt_tokens * factor)), max(1, round(self.output_tokens * factor)))


CARD_PROFILES: tuple[Profile, ...] = (
    Profile("Instruction Following", 256, 128),
    Profile("Multi-turn Chat", 512, 256),
    Profile("Docstring Generation", 768, 128),
    Profile("RAG", 1024, 128),
    Profile("Code Completion", 256, 1024),
    Profile("Code Fixing", 1024, 1024),
    Profile("Large Summarization", 4096, 512),
    Profile("Large RAG", 10240, 1536),
)


class WorkloadError(LlmpressError, ValueError):
    pass


def parse_profiles(spec: str | None) -> list[Profile]:
    """"256/128,512/256" -> the cards' profiles of those shapes (named), or custom ones."""
    if not spec:
        return list(CARD_PROFILES)
    known = {p.label: p for p in CARD_PROFILES}
    out = []
    for item in spec.split(","):
        item = item.strip()
        try:
            a, b = (int(x) for x in item.split("/"))
        except ValueError:
            raise WorkloadError(f"profile {item!r} is not PROMPT/OUTPUT tokens, e.g. 256/128") from None
        if a <= 0 or b <= 0:
            raise WorkloadError(f"profile {item!r}: token counts must be positive")
        out.append(known.get(item, Profile(f"custom {item}", a, b)))
    return out


class PromptMaker:
    """Prompts of exactly N tokens (as `tokenizer(text)` counts them), cut from real text."""

    def __init__(self, tokenizer, text: str | None = None):
        if text is None:
            from ..corpus import held_text

            text, _ = held_text()
        self.tok = tokenizer
        self.ids = tokenizer(text, add_special_tokens=False).input_ids
        self.special = len(tokenizer("").input_ids)  # BOS etc. the server's count adds

    def count(self, text: str) -> int:
        return len(self.tok(text).input_ids)

    def make(self, n: int, index: int = 0, _tries: int = 0) -> str:
        """A prompt of exactly n tokens; `index` picks a different cut of the text."""
        if _tries > 50:
            raise WorkloadError(f"could not cut a prompt of exactly {n} tokens from the text")
        if n < self.special + 1:
            raise WorkloadError(f"a prompt of {n} tokens is shorter than the tokenizer's special tokens + 1")
        ids = self.ids
        while len(ids) < n * 2 + 64:  # long profiles: repeat the corpus
            ids = ids + self.ids
        start = (index * 7919) % max(1, len(ids) - 2 * n)
        k = n - self.special
        for _ in range(64):
            text = self.tok.decode(ids[start:start + k])
            got = self.count(text)
            if got == n:
                return text
            k += n - got  # merges at the cut change the count: step toward n
            if k <= 0:
                break
        # rare: no window of this start hits n exactly; move the start
        return self.make(n, index + 1, _tries + 1)
