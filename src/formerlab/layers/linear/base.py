"""The ``linear`` group: a kind replaces every projection of a model at once (DESIGN rule 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ...config import KindConfig
from ...registry import LINEAR


@dataclass(kw_only=True)
class LinearConfig(KindConfig):
    group: ClassVar[str] = "linear"


def make_linear(cfg: LinearConfig, in_features: int, out_features: int, *, bias: bool) -> nn.Module:
    """Build the configured linear kind for an ``in_features -> out_features`` projection."""
    return LINEAR.build(cfg, in_features=in_features, out_features=out_features, bias=bias)
