"""compress: one-shot W4A16 (GPTQ), W8A8 (SmoothQuant + GPTQ) and FP8-dynamic.

    from llmpress.compress import compress, Recipe
    compress("default", Recipe(scheme="W4A16", group_size=64), "out/w4a16")
"""
from .oneshot import compress
from .recipe import Recipe, RecipeError
from .schemes import SCHEMES, QuantArgs, Scheme, get_scheme

__all__ = ["compress", "Recipe", "RecipeError", "SCHEMES", "QuantArgs", "Scheme", "get_scheme"]
