"""Scaled dot-product softmax attention, the baseline (Vaswani et al., 2017, arXiv:1706.03762).

Multi-head with optional grouped-query heads (Ainslie et al., 2023, arXiv:2305.13245): ``num_kv_heads``
key/value heads are shared by ``num_heads / num_kv_heads`` query heads each. The kernel is
``torch.nn.functional.scaled_dot_product_attention``; ``ops.masks`` picks its mask fast paths.

Differences from the paper: none in the mechanism; grouped-query heads are an optional extension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ...config import join, param
from ...errors import ConfigError
from ...ops.masks import sdpa_mask
from ...ops.rope import apply_rope
from ...registry import ATTENTION
from ..linear import LinearConfig, make_linear
from .base import Attention, AttentionConfig
from .cache import KVCache


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
class SoftmaxAttention(Attention):
    """softmax(Q K^T / sqrt(d)) V per head, with causal, padding, KV-cache and GQA support."""

    paper = "Vaswani et al., 2017, Attention Is All You Need, arXiv:1706.03762"
    supports_causal = True
    supports_padding_mask = True
    supports_kv_cache = True
    supports_cross = True

    def __init__(
        self,
        cfg: SoftmaxAttentionConfig,
        *,
        dim: int,
        num_heads: int,
        causal: bool,
        max_seq_len: int,
        linear: LinearConfig,
        cross: bool = False,
    ):
        super().__init__()
        self.config, self.causal, self.cross = cfg, causal and not cross, cross
        self.num_heads = num_heads
        self.num_kv_heads = cfg.num_kv_heads or num_heads
        self.head_dim = dim // num_heads
        q_out, kv_out = num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if cross:
            self.q_proj = make_linear(linear, dim, q_out, bias=cfg.bias)
            self.kv_proj = make_linear(linear, dim, 2 * kv_out, bias=cfg.bias)
        else:
            self.qkv_proj = make_linear(linear, dim, q_out + 2 * kv_out, bias=cfg.bias)
        self.out_proj = make_linear(linear, q_out, dim, bias=cfg.bias)
        self.out_proj.residual_out = True

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, hd)

    def _project(self, x, context, cache):
        """Queries for x; keys/values for x (self) or the context (cross, computed once per decode)."""
        kv_dim = self.num_kv_heads * self.head_dim
        if not self.cross:
            q, k, v = self.qkv_proj(x).split([self.num_heads * self.head_dim, kv_dim, kv_dim], -1)
            return (
                self._heads(q, self.num_heads),
                self._heads(k, self.num_kv_heads),
                self._heads(v, self.num_kv_heads),
            )
        q = self._heads(self.q_proj(x), self.num_heads)
        if cache is not None and "context_kv" in cache:
            return (q, *cache["context_kv"])
        k, v = self.kv_proj(context).split([kv_dim, kv_dim], -1)
        kv = self._heads(k, self.num_kv_heads), self._heads(v, self.num_kv_heads)
        if cache is not None:
            cache["context_kv"] = kv
        return (q, *kv)

    def forward(
        self,
        x: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: dict | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self._project(x, context, cache)  # (B, nh, T, hd), (B, nkv, S, hd) x2
        if rotary is not None and not self.cross:
            q, k = apply_rope(q, *rotary), apply_rope(k, *rotary)
        if cache is not None and not self.cross:
            k, v = cache.setdefault("kv", KVCache()).update(k, v)
        key_mask = context_mask if self.cross else attention_mask
        mask, is_causal = sdpa_mask(T, k.size(2), causal=self.causal, key_mask=key_mask)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.config.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )  # (B, nh, T, hd)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))
