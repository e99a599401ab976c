"""The ``ffn`` group: built as ``FFN.build(cfg, dim=..., linear=...)``; ``linear`` is the FFN's own
``linear`` override when set, else the model's (:func:`formerlab.layers.block.part_linear`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import KindConfig, param
from ..linear import LinearConfig


@dataclass(kw_only=True)
class FFNConfig(KindConfig):
    group: ClassVar[str] = "ffn"
    linear: LinearConfig | None = param(
        None, doc="linear kind of this FFN's projections; null: the model's `linear`"
    )
