"""Performer attention: FAVOR+ positive orthogonal random features.

Paper: "Rethinking Attention with Performers", Krzysztof Choromanski, Valerii Likhosherstov, David
Dohan, Xingyou Song, Andreea Gane, Tamas Sarlos, Peter Hawkins, Jared Davis, Afroz Mohiuddin, Lukasz
Kaiser, David Belanger, Lucy Colwell, Adrian Weller, 2020, arXiv:2009.14794.

Queries and keys are scaled by ``d^(-1/4)`` and mapped to ``phi(x) = exp(omega^T x - |x|^2/2) / sqrt(m)``
with ``m`` random ``omega ~ N(0, I_d)``, drawn in orthogonal blocks (ORFs), so that
``E[phi(q)^T phi(k)] = exp(q^T k / sqrt(d))``: the softmax kernel, estimated without bias by positive
features. Attention then runs as linear attention (:class:`~.linear.LinearAttention`): bidirectional in
O(T), causal by chunked prefix sums, decoding from the running sums in the layer cache.

Numerical stabilisation: query features are taken relative to their row maximum; key features
relative to the running maximum of the key log-features seen so far (``ops.linear_attention``); both
factors cancel exactly. The projections ``omega`` are a buffer (saved with the model), shared by the
heads of a layer; ``redraw_every: N`` draws fresh ones every N training-mode forward passes, from a
generator seeded by a per-layer seed buffer and the draw index, so a resumed run redraws identically.

Differences from the paper: the key stabiliser is a running (causal) maximum instead of the maximum
over the whole sequence, so a later key never changes an earlier output; no ``eps`` is added to the
features; redraws count forward passes (with gradient accumulation, several per optimizer step)
rather than optimizer steps; attention dropout is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ...config import join, param
from ...errors import ConfigError
from ...ops.linear_attention import (
    draw_random_features,
    favor_log_features,
    stable_query_features,
)
from ...registry import ATTENTION
from .linear import LinearAttention, LinearAttentionConfig


@dataclass(kw_only=True)
class PerformerConfig(LinearAttentionConfig):
    kind = "performer"
    num_features: int = param(64, doc="random features m per head (estimator variance ~ 1/m)")
    features: Literal["orthogonal", "iid"] = param(
        "orthogonal", doc="orthogonal random features (FAVOR+) or independent Gaussian ones"
    )
    redraw_every: int = param(
        0, doc="draw fresh features every N training-mode forward passes (0: fixed at build)"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.num_features < 1:
            raise ConfigError(f"{join(path, 'num_features')}: {self.num_features}; allowed: >= 1")
        if self.redraw_every < 0:
            raise ConfigError(
                f"{join(path, 'redraw_every')}: {self.redraw_every}; allowed: 0 (fixed) or >= 1"
            )


@ATTENTION.register(PerformerConfig)
class PerformerAttention(LinearAttention):
    """Linear attention whose features estimate the softmax kernel (FAVOR+)."""

    paper = (
        "Choromanski et al., 2020, Rethinking Attention with Performers (FAVOR+), arXiv:2009.14794"
    )
    log_keys = True

    def __init__(self, cfg: PerformerConfig, **dims: Any):
        super().__init__(cfg, **dims)
        seed = torch.randint(0, 2**62, (), dtype=torch.long, device="cpu")  # model's init RNG
        self.register_buffer("feature_seed", seed)
        self.register_buffer("forward_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("omega", self._draw(0).to(torch.get_default_dtype()))  # (m, hd)

    def _draw(self, index: int) -> torch.Tensor:
        """The ``index``-th set of projections: a pure function of (feature_seed, index)."""
        generator = torch.Generator().manual_seed((int(self.feature_seed) + 7919 * index) % 2**63)
        return draw_random_features(
            self.config.num_features,
            self.head_dim,
            orthogonal=self.config.features == "orthogonal",
            generator=generator,
        )

    def redraw(self, index: int) -> None:
        """Replace the projections by the ``index``-th draw (in place; dtype and device kept)."""
        with torch.no_grad():
            self.omega.copy_(self._draw(index))

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        every = self.config.redraw_every
        if self.training and every:
            count = int(self.forward_count)
            if count and count % every == 0:
                self.redraw(count // every)
            self.forward_count += 1
        return super().forward(x, **kwargs)

    def feature_map(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query features (row-stabilised) and key log-features, (B, nh, T|S, m)."""
        scale = self.head_dim**-0.25
        log_q = favor_log_features(q * scale, self.omega)
        return stable_query_features(log_q), favor_log_features(k * scale, self.omega)
