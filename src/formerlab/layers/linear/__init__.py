"""Linear-layer kinds. Every projection in formerlab is built through :func:`make_linear`."""

from .base import LinearConfig, make_linear
from .dense import DenseConfig, DenseLinear

__all__ = ["DenseConfig", "DenseLinear", "LinearConfig", "make_linear"]
