"""The ``embedding`` group: ``EMBEDDING.build(cfg, vocab_size=..., dim=...)``; ``.weight`` is (V, D)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import KindConfig


@dataclass(kw_only=True)
class EmbeddingConfig(KindConfig):
    group: ClassVar[str] = "embedding"
