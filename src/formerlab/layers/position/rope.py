"""Rotary position embedding (RoFormer): rotate query/key pairs by position-dependent angles.

Su, Lu, Pan, Murtadha, Wen & Liu, 2021, "RoFormer: Enhanced Transformer with Rotary Position
Embedding", arXiv:2104.09864.

Differences from the paper: pairs are the two halves of each head (GPT-NeoX / LLaMA layout) rather
than interleaved neighbours; the two layouts are equivalent up to a fixed permutation of the head
dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import join, param
from ...errors import ConfigError
from ...ops.rope import rope_cos_sin, rope_frequencies
from ...registry import POSITION
from .base import Position, PositionConfig


@dataclass(kw_only=True)
class RotaryPositionConfig(PositionConfig):
    kind = "rope"
    theta: float = param(10000.0, doc="frequency base")

    def validate(self, path: str = "") -> None:
        if self.theta <= 1:
            raise ConfigError(f"{join(path, 'theta')}: {self.theta} must be > 1")


@POSITION.register(RotaryPositionConfig)
class RotaryPosition(Position):
    """Adds nothing to the embeddings; hands attention cos/sin tables for its queries and keys."""

    paper = "Su et al., 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding, arXiv:2104.09864"

    def __init__(self, cfg: RotaryPositionConfig, *, dim: int, head_dim: int, max_seq_len: int):
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"position.kind: rope needs an even head_dim, got {head_dim}")
        self.config = cfg
        self.register_buffer("inv_freq", rope_frequencies(head_dim, cfg.theta), persistent=False)

    def rotary(self, position_ids: torch.Tensor, dtype: torch.dtype):
        return rope_cos_sin(position_ids, self.inv_freq, dtype)
