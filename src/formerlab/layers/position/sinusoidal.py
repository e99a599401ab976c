"""Fixed sinusoidal position encodings (Vaswani et al., 2017, §3.5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...config import param
from ...registry import POSITION
from .base import Position, PositionConfig


@dataclass(kw_only=True)
class SinusoidalPositionConfig(PositionConfig):
    kind = "sinusoidal"
    base: float = param(10000.0, doc="wavelength base")


@POSITION.register(SinusoidalPositionConfig)
class SinusoidalPosition(Position):
    """PE[p, 2i] = sin(p / base^(2i/D)), PE[p, 2i+1] = cos(p / base^(2i/D)), added to the input."""

    paper = "Vaswani et al., 2017, Attention Is All You Need, arXiv:1706.03762"

    def __init__(self, cfg: SinusoidalPositionConfig, *, dim: int, head_dim: int, max_seq_len: int):
        super().__init__()
        self.config = cfg
        pos = torch.arange(max_seq_len, dtype=torch.float64)[:, None]
        inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(cfg.base) / dim))
        table = torch.zeros(max_seq_len, dim, dtype=torch.float64)
        table[:, 0::2] = torch.sin(pos * inv)
        table[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return x + self.table.to(x.dtype)[position_ids]
