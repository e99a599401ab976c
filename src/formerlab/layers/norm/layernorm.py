"""LayerNorm (Ba, Kiros & Hinton, 2016, arXiv:1607.06450): centre, scale to unit variance, affine."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import param
from ...registry import NORM
from .base import NormConfig


@dataclass(kw_only=True)
class LayerNormConfig(NormConfig):
    kind = "layernorm"
    scale: bool = param(True, doc="learn a per-feature gain")
    bias: bool = param(True, doc="learn an additive bias beside the gain")


@NORM.register(LayerNormConfig)
class LayerNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps) * g + b`` over the last dimension."""

    paper = "Ba, Kiros & Hinton, 2016, Layer Normalization, arXiv:1607.06450"

    def __init__(self, cfg: LayerNormConfig, *, dim: int):
        super().__init__()
        self.config, self.eps, self.shape = cfg, cfg.eps, (dim,)
        self.weight = nn.Parameter(torch.ones(dim)) if cfg.scale else None
        self.bias = nn.Parameter(torch.zeros(dim)) if cfg.bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, self.shape, self.weight, self.bias, self.eps)
