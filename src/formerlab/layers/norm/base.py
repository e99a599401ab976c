"""The ``norm`` group: built as ``NORM.build(cfg, dim=...)``.

``dim`` is always the model width. A kind whose config sets ``compressed_stream = True`` (``crmsnorm``)
works on a residual stream stored in ``dim - 1`` coordinates; the model then stores every vector of
its main branch that way (see :mod:`formerlab.layers.norm.crmsnorm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...config import KindConfig, join, param
from ...errors import ConfigError


@dataclass(kw_only=True)
class NormConfig(KindConfig):
    group: ClassVar[str] = "norm"
    #: True: the norm reads and writes the compressed (dim - 1 coordinate) residual stream
    compressed_stream: ClassVar[bool] = False
    eps: float = param(1e-5, doc="added to the variance for numerical stability")

    def validate(self, path: str = "") -> None:
        if self.eps <= 0:
            raise ConfigError(f"{join(path, 'eps')}: {self.eps} must be > 0")
