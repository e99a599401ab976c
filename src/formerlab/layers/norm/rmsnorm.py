"""RMSNorm (Zhang & Sennrich, 2019, arXiv:1910.07467): scale by the root mean square, no centring."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...registry import NORM
from .base import NormConfig


@dataclass(kw_only=True)
class RMSNormConfig(NormConfig):
    kind = "rmsnorm"


@NORM.register(RMSNormConfig)
class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * g`` over the last dimension."""

    paper = "Zhang & Sennrich, 2019, Root Mean Square Layer Normalization, arXiv:1910.07467"

    def __init__(self, cfg: RMSNormConfig, *, dim: int):
        super().__init__()
        self.config, self.eps, self.shape = cfg, cfg.eps, (dim,)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(x, self.shape, self.weight, self.eps)
