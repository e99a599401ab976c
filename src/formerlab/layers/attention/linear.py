"""Linear attention with the elu+1 feature map.

Paper: "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
Angelos Katharopoulos, Apoorv Vyas, Nikolaos Pappas, François Fleuret, 2020, arXiv:2006.16236.

Softmax similarity ``exp(q^T k)`` is replaced by ``phi(q)^T phi(k)`` with ``phi(x) = elu(x) + 1``, so
``y_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j)``: O(T) time and memory. The
causal form runs on chunked prefix sums (``ops.linear_attention``); decoding keeps only the running
sums ``S = sum phi(k) v^T`` and ``z = sum phi(k)`` in the layer cache (constant memory per token).
Padded keys contribute nothing. :class:`LinearAttention` is also the base of the Performer kind,
which changes only the feature map.

Differences from the paper: no ``eps`` is added to the denominator (a query that sees no key gets a
zero output instead); the causal kernel is chunked (a masked C x C product inside a chunk, running
sums across chunks) instead of the paper's per-position CUDA loop — same result up to rounding;
attention dropout is not offered (there is no probability matrix to drop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...config import join, param
from ...errors import ConfigError
from ...ops.linear_attention import (
    PrefixState,
    bidirectional_linear_attention,
    causal_linear_attention,
    elu_features,
)
from ...registry import ATTENTION
from .base import AttentionConfig
from .projected import ProjectedAttention

STATE_KEY = "prefix_state"


@dataclass(kw_only=True)
class LinearAttentionConfig(AttentionConfig):
    kind = "linear"
    chunk_size: int = param(
        64, doc="positions per chunk of the causal prefix-sum kernel (a C x C product per chunk)"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.dropout != 0.0:
            raise ConfigError(
                f"{join(path, 'dropout')}: {self.dropout}; allowed: 0.0 ({self.kind} attention "
                "forms no probability matrix to drop)"
            )
        if isinstance(self.chunk_size, bool) or self.chunk_size < 1:
            raise ConfigError(f"{join(path, 'chunk_size')}: {self.chunk_size}; allowed: >= 1")


@ATTENTION.register(LinearAttentionConfig)
class LinearAttention(ProjectedAttention):
    """``phi(Q) (phi(K)^T V)`` normalised, with ``phi = elu + 1``; causal by prefix sums."""

    paper = (
        "Katharopoulos et al., 2020, Transformers are RNNs: Fast Autoregressive Transformers "
        "with Linear Attention, arXiv:2006.16236"
    )
    supports_causal = True
    supports_padding_mask = True
    supports_kv_cache = True
    supports_cross = True
    log_keys = False  # True: feature_map returns key log-features (stabilised in the kernel)

    def feature_map(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, nh, T, hd) queries, (B, nh, S, hd) keys -> features (B, nh, T|S, m)."""
        return elu_features(q), elu_features(k)

    def attend(self, q, k, v, *, key_mask, cache):
        qf, kf = self.feature_map(q, k)  # (B, nh, T, m), (B, nh, S, m)
        if key_mask is not None:
            keep = key_mask[:, -k.size(2) :].to(torch.bool)[:, None, :, None]  # (B, 1, S, 1)
            kf = kf.masked_fill(~keep, -math.inf if self.log_keys else 0.0)
            v = v.masked_fill(~keep, 0.0)
        if not self.causal:
            return bidirectional_linear_attention(qf, kf, v, log_keys=self.log_keys)
        state: PrefixState | None = cache.get(STATE_KEY) if cache is not None else None
        y, state = causal_linear_attention(
            qf, kf, v, state=state, chunk_size=self.config.chunk_size, log_keys=self.log_keys
        )  # (B, nh, T, hd)
        if cache is not None:
            cache[STATE_KEY] = state
        return y
