"""`llmpress run`: one recipe, every stage, resumable."""
from .pipeline import RunError, run
from .recipe import RunRecipe, RunRecipeError, load

__all__ = ["RunError", "RunRecipe", "RunRecipeError", "load", "run"]
