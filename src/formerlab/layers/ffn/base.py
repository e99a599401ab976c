"""The ``ffn`` group: built as ``FFN.build(cfg, dim=..., linear=...)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import KindConfig


@dataclass(kw_only=True)
class FFNConfig(KindConfig):
    group: ClassVar[str] = "ffn"
