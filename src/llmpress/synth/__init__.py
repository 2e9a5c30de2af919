"""synth: random-weight checkpoints of Llama-family configs (any shape, streamed), with a tokenizer
that covers the whole vocabulary, so the whole stack can run a model shape without its weights.

    from llmpress.synth import synth
    synth("deepseek-r1-distill-llama-8b", "out/synth8b", layers=2)
"""
from .config import SynthError, builtin_names, load_config

__all__ = ["synth", "plan_synth", "SynthError", "builtin_names", "load_config"]


def __getattr__(name: str):
    # synth / plan_synth import torch and transformers; `import llmpress.synth` stays cheap.
    if name in ("synth", "plan_synth"):
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
