"""No position information (NoPE): causal attention can still infer order."""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import POSITION
from .base import Position, PositionConfig


@dataclass(kw_only=True)
class NoPositionConfig(PositionConfig):
    kind = "none"


@POSITION.register(NoPositionConfig)
class NoPosition(Position):
    """Adds nothing and rotates nothing."""

    paper = "Haviv et al., 2022, Transformer Language Models without Positional Encodings, arXiv:2203.16634"

    def __init__(self, cfg: NoPositionConfig, *, dim: int, head_dim: int, max_seq_len: int):
        super().__init__()
        self.config = cfg
