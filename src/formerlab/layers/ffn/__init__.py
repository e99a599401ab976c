"""Feed-forward kinds."""

from .base import FFNConfig
from .glu import GLU, GLUConfig
from .matformer import MatFormerConfig, MatFormerFFN, matformer_granularity
from .mlp import MLP, MLPConfig
from .moe import MoE, MoEConfig

__all__ = [
    "GLU",
    "MLP",
    "FFNConfig",
    "GLUConfig",
    "MLPConfig",
    "MatFormerConfig",
    "MatFormerFFN",
    "MoE",
    "MoEConfig",
    "matformer_granularity",
]
