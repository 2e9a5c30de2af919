"""The offline text the stages read when the user names none: the Lee news corpus shipped in
gensim's test data (299 documents, ~60k words), located without importing gensim.
`ppl` / `eval` measure perplexity and KL on it; `bench` cuts its exact-length prompts from it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import LlmpressError

LEE_FILE = "test/test_data/lee_background.cor"


class TextError(LlmpressError, ValueError):
    pass


def lee_corpus_path() -> Path:
    spec = importlib.util.find_spec("gensim")  # located, never imported (it is heavy)
    if spec is None or not spec.submodule_search_locations:
        raise TextError("the default held text needs `pip install --no-deps gensim==4.3.3` (its test data); or pass --text FILE")
    return Path(list(spec.submodule_search_locations)[0]) / LEE_FILE


def held_text(path: str | Path | None = None) -> tuple[str, str]:
    p = Path(path) if path else lee_corpus_path()
    if not p.is_file():
        raise TextError(f"text file {p} not found")
    text = p.read_text(encoding="utf-8", errors="replace").strip()
    if "\x00" in text:
        raise TextError(f"text file {p} holds NUL bytes: it is binary, not text; pass a UTF-8 text file")
    if not text:
        raise TextError(f"text file {p} is empty")
    return text, ("Lee corpus (gensim test data)" if path is None else str(p))
