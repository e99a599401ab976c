"""Low-rank linear layer: ``y = x V^T U^T + b`` with ``W ≈ U V`` (the Low-Rank Transformer, LRT).

Paper: Samuel Cahyawijaya, 2021, "Greenformers: Improving Computation and Memory Efficiency in
Transformer Models via Low-Rank Approximation", arXiv:2108.10808 (MPhil thesis; the Low-Rank
Transformer replaces each weight ``W`` (out × in) of the attention projections and the FFN by a
linear encoder–decoder pair ``E D`` of inner width ``r``).

``U`` is ``out × rank`` and ``V`` is ``rank × in``; the forward runs two matmuls (``x → x V^T → · U^T``)
and never forms ``W``. Weights: ``rank · (in + out)`` (plus ``out`` for the bias), fewer than the dense
``in · out`` when ``rank < in · out / (in + out)``. The rank is given directly (``rank``) or as a
fraction of the dense weight count (``ratio``): ``rank = max(1, floor(ratio · in · out / (in + out)))``,
so ``ratio: 0.4`` keeps at most 40% of the dense weights in every projection.

Initialisation (``init_normal_(std)``): the entries of ``U V`` are sums of ``rank`` products of
independent zero-mean factors, of variance ``rank · σ_U² · σ_V²``; both factors get
``σ_U = σ_V = (std² / rank)^(1/4)``, so the product's entries have standard deviation ``std`` like a
dense layer's, and the two factors are equally scaled (balanced for the optimizer).

Differences from the paper: the thesis trains LRT models from scratch and factorizes BERT by SVD;
here a model can do either (``model.linear: {kind: lowrank}`` or the ``factorize_lowrank``
transform). Other projections (embeddings, heads) follow ``model.linear`` as usual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ...config import join, param
from ...errors import ConfigError
from ...registry import LINEAR
from .base import LinearConfig
from .factorized import FactorizedLinear

#: the default fraction of the dense weight count a low-rank layer keeps
DEFAULT_RATIO = 0.5


@dataclass(kw_only=True)
class LowRankConfig(LinearConfig):
    kind = "lowrank"
    rank: int | None = param(None, doc="inner width r of W = U V; null: derived from ratio")
    ratio: float = param(
        DEFAULT_RATIO,
        doc="fraction of the dense weights kept: r = max(1, floor(ratio*in*out/(in+out))); "
        "used when rank is null",
    )

    def validate(self, path: str = "") -> None:
        if self.rank is not None:
            if self.rank < 1:
                raise ConfigError(f"{join(path, 'rank')}: {self.rank}; allowed: an int >= 1")
            if self.ratio != DEFAULT_RATIO:
                raise ConfigError(
                    f"{join(path, 'ratio')}: {self.ratio} given with rank {self.rank}; "
                    "allowed: exactly one of rank or ratio"
                )
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"{join(path, 'ratio')}: {self.ratio}; allowed: 0 < ratio <= 1")

    def rank_for(self, in_features: int, out_features: int) -> int:
        """The inner width of an ``in_features -> out_features`` layer."""
        if self.rank is not None:
            return self.rank
        return ratio_rank(self.ratio, in_features, out_features)


def ratio_rank(ratio: float, in_features: int, out_features: int) -> int:
    """``max(1, floor(ratio · in · out / (in + out)))``: the largest rank within the budget."""
    budget = ratio * in_features * out_features
    return max(1, math.floor(budget / (in_features + out_features) + 1e-9))


def lowrank_params(in_features: int, out_features: int, rank: int, bias: bool) -> int:
    """Parameters of a low-rank layer: ``rank · (in + out)`` weights, plus ``out`` bias entries."""
    return rank * (in_features + out_features) + (out_features if bias else 0)


@LINEAR.register(LowRankConfig)
class LowRankLinear(FactorizedLinear):
    """``y = (x V^T) U^T + b``; ``U``: (out, rank), ``V``: (rank, in)."""

    paper = (
        "Cahyawijaya, 2021, Greenformers: Improving Computation and Memory Efficiency in "
        "Transformer Models via Low-Rank Approximation, arXiv:2108.10808"
    )
    factor_names = ("U", "V")

    def __init__(self, cfg: LowRankConfig, *, in_features: int, out_features: int, bias: bool):
        rank = cfg.rank_for(in_features, out_features)
        super().__init__(cfg, in_features, out_features, rank, bias)
        self.rank = rank
        self.init_normal_(1.0 / math.sqrt(in_features))

    @property
    def products(self) -> int:
        return self.rank  # an entry of U V sums rank products

    def init_factors_(self, std: float) -> None:
        nn.init.normal_(self.U, mean=0.0, std=std)
        nn.init.normal_(self.V, mean=0.0, std=std)

    def num_parameters(self) -> int:
        return lowrank_params(self.in_features, self.out_features, self.rank, self.bias is not None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
