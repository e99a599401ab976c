"""Scaled dot-product softmax attention, the baseline (Vaswani et al., 2017, arXiv:1706.03762).

Multi-head with optional grouped-query heads (Ainslie et al., 2023, arXiv:2305.13245): ``num_kv_heads``
key/value heads are shared by ``num_heads / num_kv_heads`` query heads each. The kernel is
``torch.nn.functional.scaled_dot_product_attention``; ``ops.masks`` picks its mask fast paths.

Differences from the paper: none in the mechanism; grouped-query heads are an optional extension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ...config import join, param
from ...errors import ConfigError
from ...ops.masks import sdpa_mask
from ...ops.scores import explicit_attention
from ...registry import ATTENTION
from .base import AttentionConfig
from .cache import KVCache
from .projected import ProjectedAttention


@dataclass(kw_only=True)
class SoftmaxAttentionConfig(AttentionConfig):
    kind = "softmax"
    num_kv_heads: int | None = param(
        None, doc="key/value heads for grouped-query attention (null: one per query head)"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.num_kv_heads is not None and self.num_kv_heads < 1:
            raise ConfigError(f"{join(path, 'num_kv_heads')}: {self.num_kv_heads} must be >= 1")


@ATTENTION.register(SoftmaxAttentionConfig)
class SoftmaxAttention(ProjectedAttention):
    """softmax(Q K^T / sqrt(d)) V per head, with causal, padding, KV-cache and GQA support."""

    paper = "Vaswani et al., 2017, Attention Is All You Need, arXiv:1706.03762"
    supports_causal = True
    supports_padding_mask = True
    supports_kv_cache = True
    supports_cross = True

    #: scores -> weights for variants of softmax (clipped, top-k, ...); None = the fused SDPA kernel
    probs: Callable[[torch.Tensor], torch.Tensor] | None = None

    #: decode steps can run on fixed buffers (:class:`StaticKVCache`), so they compile once
    supports_static_cache = True

    def attend(self, q, k, v, *, key_mask, cache):
        static = cache.get("static") if cache is not None else None
        if static is not None:  # one new token per row, written at the shared slot
            k, v = cache["kv"].write(k, v, static.slot)
            key_mask = static.valid
        elif cache is not None:
            k, v = cache.setdefault("kv", KVCache()).update(k, v)
        dropout_p = self.config.dropout if self.training else 0.0
        if self.probs is not None:
            return explicit_attention(
                q,
                k,
                v,
                causal=self.causal,
                key_mask=key_mask,
                probs=self.probs,
                dropout_p=dropout_p,
            )
        mask, is_causal = sdpa_mask(q.size(2), k.size(2), causal=self.causal, key_mask=key_mask)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )  # (B, nh, T, hd)
