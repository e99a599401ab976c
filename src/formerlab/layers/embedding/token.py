"""Token embedding table, optionally scaled by sqrt(dim) (Vaswani et al., 2017, §3.4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...config import param
from ...registry import EMBEDDING
from .base import EmbeddingConfig


@dataclass(kw_only=True)
class TokenEmbeddingConfig(EmbeddingConfig):
    kind = "token"
    scale_by_sqrt_dim: bool = param(False, doc="multiply embeddings by sqrt(dim)")


@EMBEDDING.register(TokenEmbeddingConfig)
class TokenEmbedding(nn.Embedding):
    """A lookup table of ``vocab_size`` learned vectors; its weight can be tied to the output head."""

    paper = "Vaswani et al., 2017, Attention Is All You Need, arXiv:1706.03762"

    def __init__(self, cfg: TokenEmbeddingConfig, *, vocab_size: int, dim: int):
        super().__init__(vocab_size, dim)
        self.config = cfg
        self.scale = math.sqrt(dim) if cfg.scale_by_sqrt_dim else 1.0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = super().forward(input_ids)
        return x * self.scale if self.scale != 1.0 else x
