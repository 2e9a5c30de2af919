"""llmpress: compress, run, evaluate, benchmark and card Llama-family models on your own machine."""
__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import llmpress` (and the CLI's startup) does not pay for torch.
    if name in ("LLM", "SamplingParams"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
