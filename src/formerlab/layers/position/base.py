"""The ``position`` group: ``POSITION.build(cfg, dim=..., head_dim=..., max_seq_len=...)``.

A position module does one or both of: add a vector to the token embeddings (:meth:`forward`) and
give attention a rotation table for queries and keys (:meth:`rotary`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...config import KindConfig


@dataclass(kw_only=True)
class PositionConfig(KindConfig):
    group: ClassVar[str] = "position"


class Position(nn.Module):
    """Default behaviour: nothing added, no rotation."""

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D); position_ids: (B, T) or (T,)."""
        return x

    def rotary(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """(cos, sin) tables for attention, or None."""
        return None
