"""compress: one-shot W4A16 (GPTQ), W8A8 (SmoothQuant + GPTQ) and FP8-dynamic.

    from llmpress.compress import compress, Recipe
    compress("default", Recipe(scheme="W4A16", group_size=64), "out/w4a16")

The schemes themselves are defined below every stage, in llmpress.quant.
"""
from .oneshot import compress
from .recipe import Recipe, RecipeError

__all__ = ["compress", "Recipe", "RecipeError"]
