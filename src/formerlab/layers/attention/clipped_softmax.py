"""Clipped softmax attention: "Quantizable Transformers: Removing Outliers by Helping Attention Heads
Do Nothing", Yelysei Bondarenko, Markus Nagel, Tijmen Blankevoort, 2023, arXiv:2306.12929.

Softmax can only give a key exactly zero weight as its score goes to -inf, so heads that learn to "do
nothing" push their scores (and, through the residual stream, other activations) to ever larger values:
the outliers that break 8-bit quantization. The clipped softmax
``clip((zeta - gamma) * softmax(x) + gamma, 0, 1)`` with ``zeta >= 1`` and ``gamma <= 0`` reaches exact
zeros (and ones) at finite scores. Everything else is softmax attention: grouped-query heads, causal
and padding masks, KV-cache decoding; only the probabilities are computed explicitly
(:func:`formerlab.ops.scores.explicit_attention`), so the score matrix is materialised.

Differences from the paper: gamma is a fixed number; the official code's sequence-length form
``gamma = -alpha / T`` (T its fixed maximum length) is that number with ``gamma = -alpha /
max_seq_len``. ``gamma > 0`` is rejected: it would give masked (padded or future) keys weight gamma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

from ...config import join, param
from ...errors import ConfigError
from ...ops.scores import clipped_softmax
from ...registry import ATTENTION
from .softmax import SoftmaxAttention, SoftmaxAttentionConfig


@dataclass(kw_only=True)
class ClippedSoftmaxConfig(SoftmaxAttentionConfig):
    kind = "clipped_softmax"
    zeta: float = param(1.0, doc="stretch top (zeta >= 1); probabilities reach 1 for zeta > 1")
    gamma: float = param(
        -0.025, doc="stretch bottom (gamma <= 0); probabilities reach exact 0 for gamma < 0"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if not (math.isfinite(self.zeta) and self.zeta >= 1.0):
            raise ConfigError(
                f"{join(path, 'zeta')}: invalid value {self.zeta}; allowed: a finite number >= 1"
            )
        if not (math.isfinite(self.gamma) and self.gamma <= 0.0):
            raise ConfigError(
                f"{join(path, 'gamma')}: invalid value {self.gamma}; allowed: a finite number <= 0 "
                "(a positive gamma would give masked keys weight)"
            )


@ATTENTION.register(ClippedSoftmaxConfig)
class ClippedSoftmaxAttention(SoftmaxAttention):
    """clip((zeta - gamma) softmax(Q K^T / sqrt(d)) + gamma, 0, 1) V per head."""

    paper = (
        "Bondarenko, Nagel, Blankevoort, 2023, Quantizable Transformers: Removing Outliers by "
        "Helping Attention Heads Do Nothing, arXiv:2306.12929"
    )

    def __init__(self, cfg: ClippedSoftmaxConfig, **dims):
        super().__init__(cfg, **dims)
        self.probs = partial(clipped_softmax, zeta=cfg.zeta, gamma=cfg.gamma)
