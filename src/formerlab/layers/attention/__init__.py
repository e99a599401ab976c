"""Attention kinds. Each declares its capabilities (DESIGN rule 4)."""

from .base import Attention, AttentionConfig, build_attention
from .cache import DecodeCache, KVCache
from .projected import ProjectedAttention
from .softmax import SoftmaxAttention, SoftmaxAttentionConfig

__all__ = [
    "Attention",
    "AttentionConfig",
    "DecodeCache",
    "KVCache",
    "ProjectedAttention",
    "SoftmaxAttention",
    "SoftmaxAttentionConfig",
    "build_attention",
]
