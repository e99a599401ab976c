"""Position-wise two-layer MLP (Vaswani et al., 2017): ``fc2(act(fc1(x)))``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...config import join, param
from ...errors import ConfigError
from ...registry import FFN
from ..linear import LinearConfig, make_linear
from .base import FFNConfig


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU, relu(x)^2 (So et al., 2021, Primer, arXiv:2109.08668)."""
    return nn.functional.relu(x).square()


ACTIVATIONS = {
    "gelu": nn.functional.gelu,
    "relu": nn.functional.relu,
    "silu": nn.functional.silu,
    "relu2": relu2,
}


@dataclass(kw_only=True)
class MLPConfig(FFNConfig):
    kind = "mlp"
    mult: float = param(4.0, doc="hidden width as a multiple of the model width")
    activation: Literal["gelu", "relu", "silu", "relu2"] = param(
        "gelu", doc="nonlinearity (relu2: squared ReLU, Primer)"
    )
    bias: bool = param(True, doc="biases in both projections")
    dropout: float = param(0.0, doc="dropout after the activation")

    def validate(self, path: str = "") -> None:
        if self.mult <= 0:
            raise ConfigError(f"{join(path, 'mult')}: {self.mult} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{join(path, 'dropout')}: {self.dropout}; allowed: 0 <= p < 1")


@FFN.register(MLPConfig)
class MLP(nn.Module):
    """Expand to ``mult * dim``, apply the activation, project back."""

    paper = "Vaswani et al., 2017, Attention Is All You Need, arXiv:1706.03762"

    def __init__(self, cfg: MLPConfig, *, dim: int, linear: LinearConfig):
        super().__init__()
        self.config = cfg
        hidden = round(cfg.mult * dim)
        self.fc1 = make_linear(linear, dim, hidden, bias=cfg.bias)
        self.fc2 = make_linear(linear, hidden, dim, bias=cfg.bias)
        self.fc2.residual_out = True  # scaled init (GPT-2): it writes into the residual stream
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        if self.dropout:
            h = nn.functional.dropout(h, self.dropout, self.training)
        return self.fc2(h)
