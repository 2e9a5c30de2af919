"""compress: one-shot W4A16 (GPTQ), W8A8 (SmoothQuant + GPTQ) and FP8-dynamic.

    from llmpress.compress import compress, Recipe
    compress("default", Recipe(scheme="W4A16", group_size=64), "out/w4a16")
"""
from .recipe import Recipe, RecipeError
from .schemes import SCHEMES, QuantArgs, Scheme, get_scheme

__all__ = ["compress", "Recipe", "RecipeError", "SCHEMES", "QuantArgs", "Scheme", "get_scheme"]


def __getattr__(name: str):
    # `compress` pulls in the checkpoint writer, which itself needs this package's
    # tensor math (observers); importing it lazily keeps that cycle out of import time.
    if name == "compress":
        from .oneshot import compress

        return compress
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
