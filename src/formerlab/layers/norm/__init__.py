"""Normalisation kinds."""

from .base import NormConfig
from .layernorm import LayerNorm, LayerNormConfig
from .rmsnorm import RMSNorm, RMSNormConfig

__all__ = ["LayerNorm", "LayerNormConfig", "NormConfig", "RMSNorm", "RMSNormConfig"]
