"""Model cards of a run: README.md like the seed cards, and an HTML report."""
from .card import CardError, Run, render, write_cards

__all__ = ["CardError", "Run", "render", "write_cards"]
