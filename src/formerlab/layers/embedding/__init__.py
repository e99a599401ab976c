"""Token embedding kinds."""

from .base import EmbeddingConfig
from .token import TokenEmbedding, TokenEmbeddingConfig

__all__ = ["EmbeddingConfig", "TokenEmbedding", "TokenEmbeddingConfig"]
