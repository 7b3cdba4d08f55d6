"""The embedded offline world: tokenizer, tiny models and arithmetic tool-use tasks."""

from .tokenizer import CHATML_TEMPLATE, build_tokenizer

__all__ = ["build_tokenizer", "CHATML_TEMPLATE"]
