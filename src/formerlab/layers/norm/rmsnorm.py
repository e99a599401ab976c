"""RMSNorm (Zhang & Sennrich, 2019, arXiv:1910.07467): scale by the root mean square, no centring.

``scale: false`` drops the gain (the Pre-RMSNorm Transformer of Jiang et al., 2023, arXiv:2305.14858,
folds it into the next linear layer); ``bias: true`` adds a learned shift after the gain, which makes
RMSNorm on a zero-mean input exactly LayerNorm with its gain and bias (what the Pre-LN → Pre-RMSNorm
conversion keeps as the final norm).

The gradient is hand-written (:func:`formerlab.ops.norms.rms_norm`): torch's CPU backward for
``rms_norm`` is several times slower than LayerNorm's.

Differences from the paper: the optional bias (the paper's RMSNorm has none; it defaults to off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import param
from ...ops.norms import rms_norm
from ...registry import NORM
from .base import NormConfig


@dataclass(kw_only=True)
class RMSNormConfig(NormConfig):
    kind = "rmsnorm"
    scale: bool = param(True, doc="learn a per-feature gain")
    bias: bool = param(False, doc="learn an additive bias after the gain")


@NORM.register(RMSNormConfig)
class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * g (+ b)`` over the last dimension."""

    paper = "Zhang & Sennrich, 2019, Root Mean Square Layer Normalization, arXiv:1910.07467"

    def __init__(self, cfg: RMSNormConfig, *, dim: int):
        super().__init__()
        self.config, self.eps = cfg, cfg.eps
        self.weight = nn.Parameter(torch.ones(dim)) if cfg.scale else None
        self.bias = nn.Parameter(torch.zeros(dim)) if cfg.bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = rms_norm(x, self.weight, self.eps)  # torch's forward; a hand-written backward
        return y + self.bias if self.bias is not None else y
