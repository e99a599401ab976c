"""What the factorized linear kinds share (``lowrank``, ``dense_sparse``): a weight ``W = L R`` kept as
an ``(out, k)`` left factor ``L`` and a ``(k, in)`` right factor ``R``, applied as two matmuls
``(x R^T) L^T + b`` without forming ``W``.

A kind names its two factors (``factor_names``: the parameter names, hence the state-dict keys),
passes the inner width ``k`` to :class:`FactorizedLinear`, says in ``products`` how many products of
factor entries each entry of ``L R`` sums, and fills the factors in ``init_factors_``; it may replace
:meth:`FactorizedLinear.right_factor` (what a forward applies, e.g. a masked factor).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import LinearConfig


def factor_std(std: float, products: int) -> float:
    """The std of both factors' entries that gives their product entries of std ``std`` when each
    product entry sums ``products`` products of independent zero-mean entries (variance
    ``products * factor_std^4``); both factors equally scaled."""
    return (std * std / products) ** 0.25


class FactorizedLinear(nn.Module):
    """``y = (x R^T) L^T + b``; ``L``: (out, k), ``R``: (k, in), named by ``factor_names``."""

    fusable = False  # q, k and v are factorized one by one
    #: parameter names of the left (out, k) and the right (k, in) factor
    factor_names: ClassVar[tuple[str, str]]

    def __init__(
        self, cfg: LinearConfig, in_features: int, out_features: int, inner: int, bias: bool
    ):
        super().__init__()
        self.config = cfg
        self.in_features = in_features
        self.out_features = out_features
        left, right = self.factor_names
        self.register_parameter(left, nn.Parameter(torch.empty(out_features, inner)))
        self.register_parameter(right, nn.Parameter(torch.empty(inner, in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    def products(self) -> int:
        """Products of factor entries summed by one entry of ``L R`` (sets the init scale)."""
        raise NotImplementedError

    def init_factors_(self, std: float) -> None:
        """Draw both factors with entries of std ``std`` (in ``torch.no_grad``)."""
        raise NotImplementedError

    def init_normal_(self, std: float) -> None:
        """Factors of std ``(std² / products)^(1/4)`` each: ``L R`` has entries of std ``std``, as a
        dense layer's Normal(0, std) weights; zero bias."""
        with torch.no_grad():
            self.init_factors_(factor_std(std, self.products))
            if self.bias is not None:
                self.bias.zero_()

    def left_factor(self) -> torch.Tensor:
        return getattr(self, self.factor_names[0])

    def right_factor(self) -> torch.Tensor:
        """The (k, in) factor the forward applies."""
        return getattr(self, self.factor_names[1])

    def effective_weight(self) -> torch.Tensor:
        """The dense (out, in) matrix ``L R`` this layer applies."""
        return self.left_factor() @ self.right_factor()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.right_factor().T  # (..., k)
        return nn.functional.linear(h, self.left_factor(), self.bias)  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
