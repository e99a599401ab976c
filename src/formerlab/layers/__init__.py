"""Technique building blocks; importing this package registers every built-in layer kind."""

from . import attention, embedding, ffn, linear, norm, position
from .block import TransformerBlock

__all__ = ["TransformerBlock", "attention", "embedding", "ffn", "linear", "norm", "position"]
