"""One Transformer layer: self-attention, optional cross-attention and a feed-forward, each wrapped in
a residual connection whose normalisation is placed ``pre`` (x + f(norm(x))) or ``post``
(norm(x + f(x))) as the model config says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..registry import FFN, NORM
from .attention import build_attention


class TransformerBlock(nn.Module):
    """Wires the configured attention, FFN and norms; knows nothing about any particular kind."""

    def __init__(self, cfg: Any, *, causal: bool, cross: bool = False):
        super().__init__()
        dims = dict(
            dim=cfg.dim,
            num_heads=cfg.num_heads,
            max_seq_len=cfg.max_seq_len,
            linear=cfg.linear,
        )
        self.placement = cfg.norm_placement
        self.attn_norm = NORM.build(cfg.norm, dim=cfg.dim)
        self.attn = build_attention(cfg.attention, causal=causal, **dims)
        self.cross_norm = NORM.build(cfg.norm, dim=cfg.dim) if cross else None
        self.cross_attn = (
            build_attention(cfg.cross_attention, causal=False, cross=True, **dims)
            if cross
            else None
        )
        self.ffn_norm = NORM.build(cfg.norm, dim=cfg.dim)
        self.ffn = FFN.build(cfg.ffn, dim=cfg.dim, linear=cfg.linear)
        self.dropout = cfg.dropout  # functional, and skipped entirely when 0 (decode speed)

    def _residual(
        self, x: torch.Tensor, norm: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        if self.placement == "pre":
            return x + self._drop(fn(norm(x)))
        return norm(x + self._drop(fn(x)))

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(y, self.dropout, self.training) if self.dropout else y

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
        x = self._residual(
            x,
            self.attn_norm,
            lambda h: self.attn(h, attention_mask=attention_mask, rotary=rotary, cache=cache),
        )
        if self.cross_attn is not None:
            cross_cache = cache.setdefault("cross", {}) if cache is not None else None
            x = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(
                    h, context=context, context_mask=context_mask, cache=cross_cache
                ),
            )
        return self._residual(x, self.ffn_norm, self.ffn)
