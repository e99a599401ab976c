"""Gated attention: "Quantizable Transformers: Removing Outliers by Helping Attention Heads Do Nothing",
Yelysei Bondarenko, Markus Nagel, Tijmen Blankevoort, 2023, arXiv:2306.12929.

A head that should leave a token unchanged must otherwise learn a near-exact softmax zero, which drives
activation outliers. Gated attention lets it switch itself off instead: each head's output is scaled by
a per-token gate ``sigmoid(G(x)_h)`` computed from the attention's input ``x`` before the heads are
merged and projected, ``out = W_o concat_h(sigmoid(G(x)_h) * softmax(Q_h K_h^T / sqrt(d)) V_h)``.
The kernel is softmax attention unchanged (SDPA, grouped-query heads, causal and padding masks, KV-cache
decoding: the gate depends only on the current token, so decoding needs no extra state).

Differences from the paper: G is one ``dim -> num_heads`` projection built through the ``linear`` group
(each head's gate reads every feature of x: the official code's ``attn_gate_linear_all_features``
option), where the paper's default gives each head a ``head_dim -> 1`` linear on its own slice of x.
Its bias is a separate per-head parameter starting at ``logit(gate_init)`` (the paper's gate init,
0.25 in its OPT recipes), so the model's initialisation, which zeros linear biases, keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...config import join, param
from ...errors import ConfigError
from ...registry import ATTENTION
from ..linear import LinearConfig, make_linear
from .softmax import SoftmaxAttention, SoftmaxAttentionConfig


@dataclass(kw_only=True)
class GatedAttentionConfig(SoftmaxAttentionConfig):
    kind = "gated"
    gate_init: float = param(0.25, doc="initial gate value sigmoid(bias) of every head, in (0, 1)")

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if not 0.0 < self.gate_init < 1.0:
            raise ConfigError(
                f"{join(path, 'gate_init')}: invalid value {self.gate_init}; allowed: 0 < p < 1"
            )


@ATTENTION.register(GatedAttentionConfig)
class GatedAttention(SoftmaxAttention):
    """softmax attention whose heads are each scaled by sigmoid(G(x) + b) before the output projection."""

    paper = (
        "Bondarenko, Nagel, Blankevoort, 2023, Quantizable Transformers: Removing Outliers by "
        "Helping Attention Heads Do Nothing, arXiv:2306.12929"
    )

    def __init__(
        self, cfg: GatedAttentionConfig, *, dim: int, num_heads: int, linear: LinearConfig, **dims
    ):
        super().__init__(cfg, dim=dim, num_heads=num_heads, linear=linear, **dims)
        self.gate_proj = make_linear(linear, dim, num_heads, bias=False)
        logit = math.log(cfg.gate_init / (1.0 - cfg.gate_init))
        self.gate_bias = nn.Parameter(torch.full((num_heads,), logit))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token, per-head gate in (0, 1): (B, T, D) -> (B, nh, T, 1)."""
        g = torch.sigmoid(self.gate_proj(x) + self.gate_bias)  # (B, T, nh)
        return g.transpose(1, 2).unsqueeze(-1)

    def output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return super().output(y * self.gate(x), x)  # y: (B, nh, T, hd)
