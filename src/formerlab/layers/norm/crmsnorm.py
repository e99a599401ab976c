"""CRMSNorm, the compressed RMSNorm of the Pre-CRMSNorm Transformer.

Paper: Zixuan Jiang, Jiaqi Gu, Hanqing Zhu, David Z. Pan, 2023, "Pre-RMSNorm and Pre-CRMSNorm
Transformers: Equivalent and Efficient Pre-LN Transformers", NeurIPS 2023, arXiv:2305.14858.

A zero-mean vector ``x in R^d`` is fully described by its first ``d - 1`` coordinates, since
``x_d = -sum_{i<d} x_i``. A model whose norm is ``crmsnorm`` stores its whole residual stream that
way (``compressed_stream``): token and position embeddings have ``d - 1`` columns, the projections
that read the stream have ``d - 1`` input columns and the ones that write into it ``d - 1`` output
rows. CRMSNorm normalises such a vector by the RMS of the full vector it stands for::

    CRMSNorm(x) = x / sqrt((sum_i x_i^2 + (sum_i x_i)^2) / d + eps) * g        (x, g in R^(d-1))

which equals the first ``d - 1`` coordinates of ``RMSNorm(expand(x))`` (and of LayerNorm, the
expanded vector having zero mean). :func:`compress` and :func:`expand` convert between the two forms.

Differences from the paper: the gain ``g`` is optional (``scale``) and acts on the ``d - 1`` stored
coordinates, so the output stays a compressed zero-mean vector; the paper folds the gain into the
next linear layer instead (what ``pre_ln_to_crmsnorm`` does, with ``scale: false``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...config import param
from ...errors import ConfigError
from ...registry import NORM
from .base import NormConfig


def compress(x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (..., d - 1): the first d - 1 coordinates of x minus its mean (a new tensor)."""
    return (x - x.mean(dim=-1, keepdim=True))[..., :-1].clone(memory_format=torch.contiguous_format)


def expand(x: torch.Tensor) -> torch.Tensor:
    """(..., d - 1) -> (..., d): append the coordinate that makes the vector sum to zero."""
    return torch.cat([x, -x.sum(dim=-1, keepdim=True)], dim=-1)


@dataclass(kw_only=True)
class CRMSNormConfig(NormConfig):
    kind = "crmsnorm"
    compressed_stream: ClassVar[bool] = True
    scale: bool = param(True, doc="learn a gain on the d-1 stored coordinates")


@NORM.register(CRMSNormConfig)
class CRMSNorm(nn.Module):
    """RMSNorm of the zero-mean ``dim``-vector whose first ``dim - 1`` coordinates are the input."""

    paper = (
        "Jiang, Gu, Zhu & Pan, 2023, Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and "
        "Efficient Pre-LN Transformers, arXiv:2305.14858"
    )

    def __init__(self, cfg: CRMSNormConfig, *, dim: int):
        super().__init__()
        if dim < 2:
            raise ConfigError(f"norm.kind: crmsnorm needs dim >= 2, got {dim}")
        self.config, self.eps, self.dim = cfg, cfg.eps, dim
        self.weight = nn.Parameter(torch.ones(dim - 1)) if cfg.scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., dim - 1)
        total = x.sum(dim=-1, keepdim=True)
        mean_square = (torch.linalg.vecdot(x, x).unsqueeze(-1) + total * total) / self.dim
        y = x * torch.rsqrt(mean_square + self.eps)
        return y * self.weight if self.weight is not None else y

    def extra_repr(self) -> str:
        return f"dim={self.dim} (stores {self.dim - 1}), eps={self.eps}"
