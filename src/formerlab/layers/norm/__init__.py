"""Normalisation kinds."""

from .base import NormConfig
from .crmsnorm import CRMSNorm, CRMSNormConfig
from .layernorm import LayerNorm, LayerNormConfig
from .none import NoNorm, NoNormConfig
from .rmsnorm import RMSNorm, RMSNormConfig

__all__ = [
    "CRMSNorm",
    "CRMSNormConfig",
    "LayerNorm",
    "LayerNormConfig",
    "NoNorm",
    "NoNormConfig",
    "NormConfig",
    "RMSNorm",
    "RMSNormConfig",
]
