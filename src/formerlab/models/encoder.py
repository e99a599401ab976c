"""Bidirectional encoder (BERT-style) with a configurable head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import param
from ..errors import InputError
from ..layers.attention.base import capability
from ..registry import HEAD, MODEL
from .base import TransformerConfig, TransformerStack, init_weights
from .heads import ClassifierHeadConfig, HeadConfig


@dataclass(kw_only=True)
class EncoderConfig(TransformerConfig):
    kind = "encoder"
    head: HeadConfig = param(factory=ClassifierHeadConfig, doc="output head")


@MODEL.register(EncoderConfig)
class Encoder(nn.Module):
    """``encode(ids, mask) -> (B, T, D)``; ``model(ids, mask)`` applies the head."""

    paper = "Devlin et al., 2018, BERT: Pre-training of Deep Bidirectional Transformers, arXiv:1810.04805"

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.transformer = TransformerStack(cfg, depth=cfg.depth, causal=False)
        self.head = HEAD.build(
            cfg.head,
            dim=cfg.dim,
            vocab_size=cfg.vocab_size,
            linear=cfg.linear,
            embedding=self.transformer.embed,
        )
        init_weights(self, cfg.init_std, cfg.depth)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attention_mask is not None and not capability(
            self.config.attention, "supports_padding_mask"
        ):
            raise InputError(
                f"attention_mask: attention {self.config.attention.kind!r} lacks "
                "supports_padding_mask; pass unpadded batches"
            )
        return self.transformer(input_ids, attention_mask=attention_mask)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.head(self.encode(input_ids, attention_mask), attention_mask)
