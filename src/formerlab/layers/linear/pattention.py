"""Pattention: a projection computed as attention of the input over learnable parameter tokens.

Paper: Haiyang Wang, Yue Fan, Muhammad Ferjad Naeem, Yongqin Xian, Jan Eric Lenssen, Liwei Wang,
Federico Tombari, Bernt Schiele, 2024 (ICLR 2025), "TokenFormer: Rethinking Transformer Scaling with
Tokenized Model Parameters", arXiv:2410.23168; official code Haiyang-W/TokenFormer
(``megatron/model/tokenformer.py``, class ``Pattention``).

For an input ``X`` (..., in) and ``n`` parameter tokens, keys ``K_P`` (n, in) and values ``V_P``
(n, out)::

    S = X K_Pᵀ                     (..., n)   no dot-product scale
    Pattention(X) = Θ(S) V_P       (..., out)

``Θ`` (``normalization``):

- ``l2_norm_gelu`` (default; the paper's Eq. 5, and ``norm_activation_type`` of the official
  training configs and argument defaults):
  ``Θ(S)_ij = GeLU(S_ij · τ / ‖S_i‖₂)``: normalise each row over the ``n`` tokens, then GeLU.
- ``gelu_l2_norm`` (the official code's other option): ``Θ(S)_ij = G_ij · τ / ‖G_i‖₂`` with
  ``G = GeLU(S)``: GeLU first, then the same normalisation.

``τ = √tokens`` is fixed when the layer is built and never recomputed from the current token
count. It is a Python float rather than a tensor buffer (a float32 buffer cast to float64 would keep
float32 rounding) and is not in the state dict: the config determines it. Growth
(:mod:`formerlab.transforms.tokenformer_grow`) appends tokens and records them in ``grown_tokens``,
so a grown layer holds ``tokens + sum(grown_tokens)`` tokens but keeps the τ it was trained with.
The official code multiplies by ``√(current token count)``, which would scale every old output by
``√((n + m) / n)`` after growth. The dot product is unscaled, as in the official code (its issue #16
notes that the code passes attention scale 1.0 where Eq. 5 reads as if τ = √n scaled it); with
``l2_norm_gelu`` any such scale cancels in the normalisation anyway.

Exact growth. A grown layer evaluates its tokens in segments (the original ``tokens``, then each
growth in ``grown_tokens``) and adds the segments' squared norms and outputs in that order. The
result is the same formula, but zero keys appended by growth then add exact zeros (``GeLU(0) = 0``)
to an unchanged computation, so the grown layer's output is bit-for-bit the old one (one fused
reduction over ``n + m`` entries could round differently).

Numerics: the squared row norm is clamped below at ``EPS²`` before the square root (``EPS`` =
1e-6), so a zero row (e.g. a zero input) gives ``Θ = 0`` and a zero output instead of 0/0, with
finite gradients.

Defaults and init. ``tokens: null`` gives ``max(in, out)`` tokens: ``d`` for the attention
Q/K/V/output projections as in the paper, and ``4d`` for each projection of a ``mult: 4`` MLP.
``init_normal_(std)`` draws keys and values from Normal(0, std) (``init_weights`` passes GPT-2's
scaled std to the layers writing into the residual stream); the official code draws keys with its
``normal`` init and values with the smaller ``wang_init``. ``effective_weight()`` is not defined:
the layer is not linear, so there is no dense matrix it applies.

Differences from the paper: the paper replaces the whole FFN by one Pattention (``d → d``, ``4d``
tokens); a linear kind replaces each projection, so an MLP becomes two Pattentions with the MLP's
activation between them (``ffn: {kind: mlp, linear: {kind: dense}}`` keeps a dense FFN). The paper's
projections have no bias; when a caller asks for one (``bias=True``) the layer adds a learnable
vector after ``Θ(S) V_P``, initialised to zero (set the parts' ``bias: false`` for the paper's
form).
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

#: the row norm is clamped below at this value (a zero row gives a zero output, not NaN)
EPS = 1e-6


@dataclass(kw_only=True)
class PattentionConfig(LinearConfig):
    kind = "pattention"
    tokens: int | None = param(
        None, doc="parameter tokens n the layer is built with; null: max(in, out); τ = √tokens"
    )
    grown_tokens: list[int] = param(
        factory=list,
        doc="tokens appended by each tokenformer_grow, in order (the scale τ = √tokens is kept)",
    )
    normalization: Literal["l2_norm_gelu", "gelu_l2_norm"] = param(
        "l2_norm_gelu",
        doc="Θ: l2_norm_gelu GeLU(S·τ/‖S‖) (paper); gelu_l2_norm GeLU(S)·τ/‖GeLU(S)‖ (code option)",
    )

    def validate(self, path: str = "") -> None:
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError(
                f"{join(path, 'tokens')}: {self.tokens}; allowed: null or an int >= 1"
            )
        for i, m in enumerate(self.grown_tokens):
            if m < 1:
                raise ConfigError(
                    f"{join(join(path, 'grown_tokens'), i)}: {m}; allowed: an int >= 1"
                )

    def base_tokens(self, in_features: int, out_features: int) -> int:
        """The token count τ is computed from (before any growth)."""
        return self.tokens if self.tokens is not None else max(in_features, out_features)


def theta(scores: list[torch.Tensor], tau: float, normalization: str) -> list[torch.Tensor]:
    """Θ applied to the segments of one score row set: each row normalised over all segments."""
    if normalization == "gelu_l2_norm":
        scores = [nn.functional.gelu(s) for s in scores]
    sumsq = scores[0].square().sum(-1, keepdim=True)
    for s in scores[1:]:
        sumsq = sumsq + s.square().sum(-1, keepdim=True)
    factor = tau / sumsq.clamp_min(EPS * EPS).sqrt()  # (..., 1)
    if normalization == "gelu_l2_norm":
        return [s * factor for s in scores]
    return [nn.functional.gelu(s * factor) for s in scores]


@LINEAR.register(PattentionConfig)
class Pattention(nn.Module):
    """``Θ(x K_Pᵀ) V_P (+ b)``; ``key_tokens``: (n, in), ``value_tokens``: (n, out)."""

    paper = (
        "Wang, Fan, Naeem, Xian, Lenssen, Wang, Tombari & Schiele, 2024, TokenFormer: Rethinking "
        "Transformer Scaling with Tokenized Model Parameters, arXiv:2410.23168"
    )
    fusable = False  # q, k and v are separate Pattentions, as in the paper

    def __init__(self, cfg: PattentionConfig, *, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.config = cfg
        self.in_features = in_features
        self.out_features = out_features
        base = cfg.base_tokens(in_features, out_features)
        self.segments = (base, *cfg.grown_tokens)
        self.num_tokens = sum(self.segments)
        self.tau = math.sqrt(base)  # fixed at construction; growth keeps it
        self.key_tokens = nn.Parameter(torch.empty(self.num_tokens, in_features))
        self.value_tokens = nn.Parameter(torch.empty(self.num_tokens, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.init_normal_(0.02)

    def init_normal_(self, std: float) -> None:
        """Keys and values from Normal(0, std); bias zero."""
        with torch.no_grad():
            nn.init.normal_(self.key_tokens, mean=0.0, std=std)
            nn.init.normal_(self.value_tokens, mean=0.0, std=std)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.key_tokens.split(self.segments)
        values = self.value_tokens.split(self.segments)
        scores = [x @ k.T for k in keys]  # per segment (..., n_s)
        weights = theta(scores, self.tau, self.config.normalization)
        out = weights[0] @ values[0]  # (..., out)
        for w, v in zip(weights[1:], values[1:], strict=True):
            out = out + w @ v
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"tokens={self.num_tokens}, tau={self.tau:g}, {self.config.normalization}"
        )
