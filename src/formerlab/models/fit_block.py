"""FIT's block (read, global layers, write, local layers) and its read/write cross-attention layer.

Paper: Ting Chen and Lala Li, 2023, "FIT: Far-reaching Interleaved Transformers", arXiv:2305.12689.
The model, its config, the block's order and the differences from the paper are described in
:mod:`formerlab.models.fit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..layers.attention.base import build_attention
from ..layers.block import TransformerBlock, part_linear
from ..registry import NORM

if TYPE_CHECKING:
    from .fit import FITConfig


class CrossLayer(nn.Module):
    """``q + CrossAttn(norm(q) -> norm(context))``: FIT's read and write layers (no MLP)."""

    def __init__(self, cfg: FITConfig):
        super().__init__()
        self.query_norm = NORM.build(cfg.norm, dim=cfg.dim)
        self.context_norm = NORM.build(cfg.norm, dim=cfg.dim)
        self.attn = build_attention(
            cfg.cross_attention,
            dim=cfg.dim,
            num_heads=cfg.num_heads,
            causal=False,
            max_seq_len=cfg.max_seq_len,
            linear=part_linear(cfg.cross_attention, cfg),
            cross=True,
        )
        self.dropout = cfg.dropout

    def forward(
        self, q: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        y = self.attn(
            self.query_norm(q), context=self.context_norm(context), context_mask=context_mask
        )
        return q + nn.functional.dropout(y, self.dropout, self.training)


class FITBlock(nn.Module):
    """read -> global layers -> write -> local layers (see :mod:`formerlab.models.fit`)."""

    def __init__(self, cfg: FITConfig):
        super().__init__()
        causal, latent = cfg.causal, cfg.global_layers > 0
        self.read = CrossLayer(cfg) if latent else None
        self.globals = nn.ModuleList(
            TransformerBlock(cfg, causal=causal) for _ in range(cfg.global_layers)
        )
        self.write = CrossLayer(cfg) if latent else None
        self.local = nn.ModuleList(
            TransformerBlock(cfg, causal=causal) for _ in range(cfg.local_layers)
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor | None, ctx: dict[str, Any]):
        """x (B*G, n, D) data, z (B, G, m, D) latents -> both updated."""
        if self.read is not None:
            B, G, m, D = z.shape
            z = self.read(z.reshape(B * G, m, D), x, ctx["local_mask"])
            z = z.view(B, G * m, D)
            for layer in self.globals:
                z = layer(z, attention_mask=ctx["latent_mask"])
            z = z.view(B, G, m, D)
            source = ctx["shift"](z) if ctx["shift"] is not None else z
            x = self.write(x, source.reshape(B * G, m, D), None)
        for layer in self.local:
            x = layer(x, attention_mask=ctx["local_mask"], rotary=ctx["rotary"])
        return x, z
