"""Gated linear unit feed-forward: ``fc2(act(gate(x)) * up(x))`` — GLU, GEGLU, SwiGLU and ReGLU.

Paper: Noam Shazeer, 2020, "GLU Variants Improve Transformer", arXiv:2002.05202. The FFN's first
projection is split into two, ``gate`` and ``up``; the activated gate multiplies the linear ``up``
branch element-wise before ``fc2`` projects back to the model width. ``gate_activation`` picks the
variant: ``sigmoid`` (GLU, Dauphin et al. 2017), ``gelu`` (GEGLU), ``silu`` (SwiGLU, Swish with
beta = 1) or ``relu`` (ReGLU).

Hidden size convention: three projections instead of two, so the hidden width is
``round(2 * mult * dim / 3)``, then rounded up to a multiple of ``multiple_of``. With the same
``mult`` a ``glu`` FFN then has (up to that rounding) the parameters of an ``mlp`` FFN:
``3 * dim * hidden`` weights (+ ``2 * hidden + dim`` biases) against ``mlp``'s ``2 * dim * 4 * dim``.
This is the paper's rule (d_ff 3072 → 2048 to keep parameters and compute equal).

Differences from the paper: the paper's FFNs have no biases (``bias: false``, the default here);
biases and dropout after the gating are options. The projections are built through the ``linear``
group like every other projection.
"""

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

GATE_ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "gelu": nn.functional.gelu,
    "silu": nn.functional.silu,
    "relu": nn.functional.relu,
}


@dataclass(kw_only=True)
class GLUConfig(FFNConfig):
    kind = "glu"
    mult: float = param(
        4.0, doc="width multiple; hidden = round(2/3 * mult * dim) (same parameters as mlp)"
    )
    multiple_of: int = param(1, doc="round the hidden width up to a multiple of this")
    gate_activation: Literal["sigmoid", "gelu", "silu", "relu"] = param(
        "silu", doc="sigmoid: GLU, gelu: GEGLU, silu: SwiGLU, relu: ReGLU"
    )
    bias: bool = param(False, doc="biases in the three projections (the paper has none)")
    dropout: float = param(0.0, doc="dropout after the gating")

    def validate(self, path: str = "") -> None:
        if self.mult <= 0:
            raise ConfigError(f"{join(path, 'mult')}: {self.mult} must be > 0")
        if self.multiple_of < 1:
            raise ConfigError(f"{join(path, 'multiple_of')}: {self.multiple_of} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{join(path, 'dropout')}: {self.dropout}; allowed: 0 <= p < 1")

    def hidden(self, dim: int) -> int:
        """The hidden width for model width ``dim`` (the convention of the module docstring)."""
        width = max(1, round(2 * self.mult * dim / 3))
        return -(-width // self.multiple_of) * self.multiple_of


def glu_params(dim: int, hidden: int, bias: bool) -> int:
    """Parameters of a ``glu`` FFN: gate and up (dim -> hidden), fc2 (hidden -> dim)."""
    return 3 * dim * hidden + ((2 * hidden + dim) if bias else 0)


@FFN.register(GLUConfig)
class GLU(nn.Module):
    """``fc2(dropout(act(gate(x)) * up(x)))``."""

    paper = "Shazeer, 2020, GLU Variants Improve Transformer, arXiv:2002.05202"
    #: projections reading / writing the residual stream (layers/block.py ``stream_ports``)
    stream_ports = (("gate", "up"), ("fc2",))

    def __init__(self, cfg: GLUConfig, *, dim: int, linear: LinearConfig):
        super().__init__()
        self.config = cfg
        hidden = cfg.hidden(dim)
        self.gate = make_linear(linear, dim, hidden, bias=cfg.bias)
        self.up = make_linear(linear, dim, hidden, bias=cfg.bias)
        self.fc2 = make_linear(linear, hidden, dim, bias=cfg.bias)
        self.fc2.residual_out = True  # scaled init (GPT-2): it writes into the residual stream
        self.act = GATE_ACTIVATIONS[cfg.gate_activation]
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.gate(x)) * self.up(x)  # (..., hidden)
        if self.dropout:
            h = nn.functional.dropout(h, self.dropout, self.training)
        return self.fc2(h)
