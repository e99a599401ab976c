"""Shared wiring of multi-head attention kinds: q/k/v projections (through the ``linear`` group),
head split, rotary positions, output projection. A kind subclasses :class:`ProjectedAttention` and
implements only its kernel, :meth:`ProjectedAttention.attend`; hooks :meth:`project` and
:meth:`output` let a kind change what goes in (Primer's convolutions) or out (an output gate).
"""

from __future__ import annotations

import torch

from ...ops.rope import apply_rope
from ..linear import LinearConfig, make_fused_linear, make_linear
from .base import Attention, AttentionConfig


class ProjectedAttention(Attention):
    """``x -> q, k, v -> attend -> merge heads -> out_proj``; shapes in comments are per head."""

    def __init__(
        self,
        cfg: AttentionConfig,
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
        self.max_seq_len = max_seq_len
        self.num_heads = num_heads
        self.num_kv_heads = getattr(cfg, "num_kv_heads", None) or num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or dim // num_heads
        q_out, kv_out = num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if cross:
            self.q_proj = make_linear(linear, dim, q_out, bias=cfg.bias)
            self.kv_proj = make_fused_linear(linear, dim, [kv_out, kv_out], bias=cfg.bias)
        else:
            outs = [q_out, kv_out, kv_out]
            self.qkv_proj = make_fused_linear(linear, dim, outs, bias=cfg.bias)
        self.out_proj = make_linear(linear, q_out, dim, bias=cfg.bias)
        self.out_proj.residual_out = True

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, hd)

    def split_qkv(self, h: torch.Tensor):
        """(B, T, (nh + 2 nkv) hd) fused projections -> q (B, nh, T, hd), k and v (B, nkv, T, hd)."""
        kv_dim = self.num_kv_heads * self.head_dim
        q, k, v = h.split([self.num_heads * self.head_dim, kv_dim, kv_dim], -1)
        return (
            self._heads(q, self.num_heads),
            self._heads(k, self.num_kv_heads),
            self._heads(v, self.num_kv_heads),
        )

    def project(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        cache: dict | None,
        key_mask: torch.Tensor | None = None,
    ):
        """Queries from x; keys/values from x (self) or the context (cross: computed once per decode).

        ``key_mask`` is the self-attention mask (B, S_total), for kinds whose projections mix
        positions (Primer's convolutions)."""
        if not self.cross:
            return self.split_qkv(self.qkv_proj(x))
        kv_dim = self.num_kv_heads * self.head_dim
        q = self._heads(self.q_proj(x), self.num_heads)
        if cache is not None and "context_kv" in cache:
            return (q, *cache["context_kv"])
        k, v = self.kv_proj(context).split([kv_dim, kv_dim], -1)
        kv = self._heads(k, self.num_kv_heads), self._heads(v, self.num_kv_heads)
        if cache is not None:
            cache["context_kv"] = kv
        return (q, *kv)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        key_mask: torch.Tensor | None,
        cache: dict | None,
    ) -> torch.Tensor:
        """The kernel: (B, nh, T, hd) queries, (B, nkv, S, hd) keys/values of this call -> (B, nh, T, hd).

        ``key_mask`` (B, S_total) covers cached keys too (True = real token); ``cache`` is this
        layer's decode state (None outside decoding; never set for cross-attention).
        """
        raise NotImplementedError

    def output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Merge heads (B, nh, T, hd) -> (B, T, D) and project; ``x`` is the block input."""
        B, _, T, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))

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
        q, k, v = self.project(x, context, cache, None if self.cross else attention_mask)
        if rotary is not None and not self.cross:
            q, k = apply_rope(q, *rotary), apply_rope(k, *rotary)
        key_mask = context_mask if self.cross else attention_mask
        y = self.attend(q, k, v, key_mask=key_mask, cache=None if self.cross else cache)
        return self.output(y, x)
