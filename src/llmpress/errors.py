"""The one base of every error llmpress reports to its user as a single line.

Each stage's error (RecipeError, ModelError, EvalError, ...) derives from LlmpressError and
from the builtin it always was (ValueError, RuntimeError, ...), so `cli.main` catches one class
while library callers' `except ValueError` keeps working.
"""
from __future__ import annotations


class LlmpressError(Exception):
    """Bad input or an impossible request: the message names the value, the file and the fix."""
