"""The ``none`` norm: the identity, with no parameters.

No paper of its own: it removes a normalisation from a placement (``pre`` with ``none`` is an
unnormalised residual network; ``post`` with ``none`` drops the post-norms) so that placement and
normalisation studies, such as Peri-LN (Kim et al., 2025, arXiv:2502.02732), can compare against
"no norm at all" with everything else equal.

Differences from the paper: not applicable; ``eps`` is accepted for a uniform config and unused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...registry import NORM
from .base import NormConfig


@dataclass(kw_only=True)
class NoNormConfig(NormConfig):
    kind = "none"


@NORM.register(NoNormConfig)
class NoNorm(nn.Module):
    """Returns its input unchanged."""

    paper = "none (identity; the no-normalisation baseline)"

    def __init__(self, cfg: NoNormConfig, *, dim: int):
        super().__init__()
        self.config = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
