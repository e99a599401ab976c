"""Dense × semi-structured-sparse linear layer: ``W ≈ D S`` (DSFormer), with the Straight-Through
Factorizer.

Paper: Rahul Chand, Yashoteja Prabhu, Pratyush Kumar, 2023, "DSFormer: Effective Compression of
Text-Transformers by Dense-Sparse Weight Factorization", arXiv:2312.13211.

``D`` (out × k) is a small dense basis; ``S`` (k × in) holds exactly ``s`` non-zeros in every column,
so each column of ``W`` (the weights read by one input feature) is a combination of ``s`` of the ``k``
basis vectors. The layer keeps a dense latent ``S̃`` (``S_latent``) and uses ``S = S̃ ⊙ M``, where
the mask ``M`` keeps, in every column, the ``s`` entries of largest ``|S̃|`` (exactly ``s``, ties
broken by ``torch.topk``). ``support`` says how ``M`` trains:

- ``stf`` (Straight-Through Factorizer): ``M`` is recomputed from ``S̃`` at every forward and the
  backward passes the gradient of ``S`` straight through to *all* entries of ``S̃``, masked or not,
  so a masked entry that the loss favours grows until it enters the support.
- ``fixed``: ``M`` is frozen (a buffer, saved with the weights) at the support ``S̃`` has when it is
  initialised; only the kept entries receive gradient.

Parameter count (what :meth:`DenseSparseLinear.num_parameters` returns): the stored values,
``out · k + in · s`` (+ ``out`` bias entries), as the paper counts them. The positions of the
non-zeros are counted apart, as index bits: ``in · s · ceil(log2 k)`` (:meth:`index_bits`); they are
not parameters (not trained values) and are left out of the parameter budget. The basis width is
``basis`` or, from ``ratio`` (a fraction of the dense ``in · out`` weights),
``k = floor((ratio · in · out - in · s) / out)``; a budget that leaves ``k < s`` is refused.

Initialisation (``init_normal_(std)``): ``D`` ~ Normal(0, σ) and ``S̃`` ~ Normal, rescaled so that its
kept entries have root-mean-square σ, with ``σ = (std² / s)^(1/4)``: every entry of ``D S`` is a sum
of ``s`` independent zero-mean products, so it has std ``std`` like a dense layer's.

Differences from the paper: the sparse factor is applied as a masked dense matmul (the layer shows
the accuracy per parameter, not the speed of a sparse kernel); the latent keeps ``k · in`` values
during training (only ``out · k + in · s`` values and the indices need storing afterwards). The
paper's initialisation (a task-unaware factorization) is the ``factorize_dense_sparse`` transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...config import join, param
from ...errors import ConfigError
from ...registry import LINEAR
from .base import LinearConfig
from .factorized import FactorizedLinear

#: the default fraction of the dense weight count a dense-sparse layer keeps
DEFAULT_RATIO = 0.5


@dataclass(kw_only=True)
class DenseSparseConfig(LinearConfig):
    kind = "dense_sparse"
    basis: int | None = param(None, doc="basis width k (columns of D); null: derived from ratio")
    ratio: float = param(
        DEFAULT_RATIO,
        doc="fraction of the dense weights kept: k = floor((ratio*in*out - in*nonzeros) / out); "
        "used when basis is null",
    )
    nonzeros: int = param(2, doc="non-zeros s in every column of the sparse factor S")
    support: Literal["stf", "fixed"] = param(
        "stf", doc="stf: straight-through factorizer (support moves); fixed: frozen support"
    )

    def validate(self, path: str = "") -> None:
        if self.nonzeros < 1:
            raise ConfigError(f"{join(path, 'nonzeros')}: {self.nonzeros}; allowed: an int >= 1")
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"{join(path, 'ratio')}: {self.ratio}; allowed: 0 < ratio <= 1")
        if self.basis is None:
            return
        if self.ratio != DEFAULT_RATIO:
            raise ConfigError(
                f"{join(path, 'ratio')}: {self.ratio} given with basis {self.basis}; "
                "allowed: exactly one of basis or ratio"
            )
        if self.basis < self.nonzeros:
            raise ConfigError(
                f"{join(path, 'basis')}: {self.basis} < nonzeros {self.nonzeros}; "
                "allowed: basis >= nonzeros"
            )

    def basis_for(self, in_features: int, out_features: int) -> int:
        """The basis width k of an ``in_features -> out_features`` layer."""
        if self.basis is not None:
            return self.basis
        k = ratio_basis(self.ratio, self.nonzeros, in_features, out_features)
        if k < self.nonzeros:
            raise ConfigError(
                f"linear.ratio: {self.ratio} leaves a basis of {k} < nonzeros {self.nonzeros} for "
                f"a {in_features} -> {out_features} projection; allowed: a larger ratio or fewer "
                "nonzeros"
            )
        return k


def ratio_basis(ratio: float, nonzeros: int, in_features: int, out_features: int) -> int:
    """``floor((ratio · in · out - in · s) / out)``: the widest basis within the budget."""
    budget = ratio * in_features * out_features - in_features * nonzeros
    return math.floor(budget / out_features + 1e-9)


def dense_sparse_params(in_features: int, out_features: int, basis: int, nonzeros: int) -> int:
    """Stored weight values of a dense-sparse layer: ``out · k + in · s`` (bias not included)."""
    return out_features * basis + in_features * nonzeros


def top_s_mask(latent: torch.Tensor, s: int) -> torch.Tensor:
    """Boolean mask keeping the ``s`` entries of largest magnitude in every column of ``latent``."""
    index = latent.detach().abs().topk(s, dim=0).indices  # (s, in)
    mask = torch.zeros(latent.shape, dtype=torch.bool, device=latent.device)
    return mask.scatter_(0, index, True)


@LINEAR.register(DenseSparseConfig)
class DenseSparseLinear(FactorizedLinear):
    """``y = (x S^T) D^T + b`` with ``S = S̃ ⊙ top_s(|S̃|)`` per column; D: (out, k), S̃: (k, in)."""

    paper = (
        "Chand, Prabhu, Kumar, 2023, DSFormer: Effective Compression of Text-Transformers by "
        "Dense-Sparse Weight Factorization, arXiv:2312.13211"
    )
    factor_names = ("D", "S_latent")

    def __init__(self, cfg: DenseSparseConfig, *, in_features: int, out_features: int, bias: bool):
        basis = cfg.basis_for(in_features, out_features)
        super().__init__(cfg, in_features, out_features, basis, bias)
        self.basis = basis
        self.nonzeros = cfg.nonzeros
        self.straight_through = cfg.support == "stf"
        if not self.straight_through:
            self.register_buffer("mask", torch.ones(basis, in_features, dtype=torch.bool))
        self.init_normal_(1.0 / math.sqrt(in_features))

    @property
    def products(self) -> int:
        return self.nonzeros  # an entry of D S sums the s kept products of its column

    def init_factors_(self, std: float) -> None:
        """D ~ Normal(0, std); S̃ ~ Normal, rescaled so that its kept entries have RMS std."""
        nn.init.normal_(self.D, mean=0.0, std=std)
        nn.init.normal_(self.S_latent)
        kept = self.S_latent[top_s_mask(self.S_latent, self.nonzeros)]
        self.S_latent.mul_(std / kept.pow(2).mean().sqrt())

    def init_normal_(self, std: float) -> None:
        """``D S`` gets entries of std ``std`` (see the module docstring); resets a fixed support."""
        super().init_normal_(std)
        self.reset_support_()

    def reset_support_(self) -> None:
        """Freeze a ``fixed`` layer's support at the current top-s of ``|S̃|`` (no-op for stf)."""
        if not self.straight_through:
            self.mask.copy_(top_s_mask(self.S_latent, self.nonzeros))

    def support_mask(self) -> torch.Tensor:
        """The (k, in) boolean support of ``S`` used by the next forward."""
        if self.straight_through:
            return top_s_mask(self.S_latent, self.nonzeros)
        return self.mask

    def sparse_factor(self) -> torch.Tensor:
        """``S`` as a dense (k, in) tensor; with stf its gradient flows to every entry of ``S̃``."""
        hard = self.S_latent * self.support_mask()
        if self.straight_through:
            return self.S_latent + (hard - self.S_latent).detach()
        return hard

    def right_factor(self) -> torch.Tensor:
        return self.sparse_factor()

    def effective_weight(self) -> torch.Tensor:
        """The dense (out, in) matrix ``D S`` this layer applies."""
        return self.D @ (self.S_latent * self.support_mask())

    def num_parameters(self) -> int:
        """Stored values ``out · k + in · s`` (+ bias); index bits are counted by :meth:`index_bits`."""
        values = dense_sparse_params(self.in_features, self.out_features, self.basis, self.nonzeros)
        return values + (self.out_features if self.bias is not None else 0)

    def index_bits(self) -> int:
        """Bits to store the support: ``ceil(log2 k)`` per non-zero (0 when k = 1)."""
        return self.in_features * self.nonzeros * math.ceil(math.log2(self.basis))

    def extra_repr(self) -> str:
        support = "stf" if self.straight_through else "fixed"
        return f"{super().extra_repr()}, basis={self.basis}, nonzeros={self.nonzeros}, support={support}"
