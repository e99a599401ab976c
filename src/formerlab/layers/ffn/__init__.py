"""Feed-forward kinds."""

from .base import FFNConfig
from .mlp import MLP, MLPConfig

__all__ = ["MLP", "FFNConfig", "MLPConfig"]
