"""Attention kinds. Each declares its capabilities (DESIGN rule 4)."""

from . import clipped_softmax as clipped_softmax
from . import gated as gated
from . import hard_topk as hard_topk
from . import linear as linear
from . import linformer as linformer
from . import lipschitz as lipschitz
from . import local as local
from . import longformer as longformer
from . import mdha as mdha
from . import performer as performer
from . import reformer as reformer
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
