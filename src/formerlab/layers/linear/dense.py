"""Dense linear layer: ``y = x W^T + b``, the baseline every other linear kind is compared with."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...registry import LINEAR
from .base import LinearConfig


@dataclass(kw_only=True)
class DenseConfig(LinearConfig):
    kind = "dense"


@LINEAR.register(DenseConfig)
class DenseLinear(nn.Linear):
    """A plain ``nn.Linear`` built from a config (so it can be swapped for any linear kind)."""

    paper = "Vaswani et al., 2017, Attention Is All You Need, arXiv:1706.03762 (baseline)"
    fusable = True  # q, k and v share one matmul

    def __init__(self, cfg: DenseConfig, *, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.config = cfg

    def effective_weight(self) -> torch.Tensor:
        return self.weight
