"""Learned absolute position embeddings (as in GPT-2 / BERT)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...registry import POSITION
from .base import Position, PositionConfig


@dataclass(kw_only=True)
class LearnedPositionConfig(PositionConfig):
    kind = "learned"


@POSITION.register(LearnedPositionConfig)
class LearnedPosition(Position):
    """A trainable vector per position, added to the token embedding."""

    paper = "Radford et al., 2019, Language Models are Unsupervised Multitask Learners (GPT-2)"

    def __init__(self, cfg: LearnedPositionConfig, *, dim: int, head_dim: int, max_seq_len: int):
        super().__init__()
        self.config = cfg
        self.embedding = nn.Embedding(max_seq_len, dim)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return x + self.embedding(position_ids)
