"""The ``transform`` group: ``TRANSFORM.build(cfg, model=model)`` returns the transformed copy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import KindConfig


@dataclass(kw_only=True)
class TransformConfig(KindConfig):
    group: ClassVar[str] = "transform"
