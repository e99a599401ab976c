"""The ``linear`` group: a kind replaces every projection of a model at once (DESIGN rule 3).

Built as ``LINEAR.build(cfg, in_features=..., out_features=..., bias=...)``; the module maps
``(..., in_features) -> (..., out_features)``. Conventions a kind may follow:

- ``fusable`` (class attribute, default False): whether several projections that read the same input
  (attention's q, k and v) may share one ``in -> sum(outs)`` layer of this kind. Dense layers fuse
  (one matmul is faster); factorized, sparse, constrained and tokenized kinds do not, because a fused
  layer would factorize or constrain the concatenated matrix, not each projection as their papers do.
- ``init_normal_(std)``: initialise so that the layer acts like a dense layer with Normal(0, std)
  weights; :func:`formerlab.models.base.init_weights` calls it (and leaves the layer's own submodules
  alone) instead of initialising ``nn.Linear`` weights directly.
- ``effective_weight()``: the dense ``(out, in)`` matrix the layer applies (for analysis and tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...config import KindConfig
from ...registry import LINEAR


@dataclass(kw_only=True)
class LinearConfig(KindConfig):
    group: ClassVar[str] = "linear"


def make_linear(cfg: LinearConfig, in_features: int, out_features: int, *, bias: bool) -> nn.Module:
    """Build the configured linear kind for an ``in_features -> out_features`` projection."""
    return LINEAR.build(cfg, in_features=in_features, out_features=out_features, bias=bias)


class ConcatLinear(nn.Module):
    """Several projections of one input, outputs concatenated: what :func:`make_fused_linear` builds
    for a kind that must not fuse. ``parts[i]`` is the i-th projection."""

    def __init__(self, parts: Sequence[nn.Module], out_features: Sequence[int]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.out_features = sum(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def make_fused_linear(
    cfg: LinearConfig, in_features: int, out_features: Sequence[int], *, bias: bool
) -> nn.Module:
    """Projections of one input to ``out_features[0]``, ``out_features[1]``, ... concatenated along the
    last dimension: one layer when the kind is ``fusable``, else one layer per projection."""
    if getattr(LINEAR.entry(cfg.kind).impl, "fusable", False) or len(out_features) == 1:
        return make_linear(cfg, in_features, sum(out_features), bias=bias)
    parts = [make_linear(cfg, in_features, n, bias=bias) for n in out_features]
    return ConcatLinear(parts, out_features)
