"""The ``norm`` group: built as ``NORM.build(cfg, dim=...)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import KindConfig, join, param
from ...errors import ConfigError


@dataclass(kw_only=True)
class NormConfig(KindConfig):
    group: ClassVar[str] = "norm"
    eps: float = param(1e-5, doc="added to the variance for numerical stability")

    def validate(self, path: str = "") -> None:
        if self.eps <= 0:
            raise ConfigError(f"{join(path, 'eps')}: {self.eps} must be > 0")
