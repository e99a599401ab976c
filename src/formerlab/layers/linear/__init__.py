"""Linear-layer kinds. Every projection in formerlab is built through :func:`make_linear`."""

from .base import ConcatLinear, LinearConfig, make_fused_linear, make_linear
from .dense import DenseConfig, DenseLinear
from .dense_sparse import DenseSparseConfig, DenseSparseLinear
from .lipschitz import LipschitzConfig, LipschitzLinear
from .lowrank import LowRankConfig, LowRankLinear
from .pattention import Pattention, PattentionConfig

__all__ = [
    "ConcatLinear",
    "DenseConfig",
    "DenseLinear",
    "DenseSparseConfig",
    "DenseSparseLinear",
    "LinearConfig",
    "LipschitzConfig",
    "LipschitzLinear",
    "LowRankConfig",
    "LowRankLinear",
    "Pattention",
    "PattentionConfig",
    "make_fused_linear",
    "make_linear",
]
