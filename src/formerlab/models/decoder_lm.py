"""Decoder-only language model (GPT-style): causal stack + output head over the vocabulary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers.attention import DecodeCache
from ..registry import MODEL
from .base import (
    TransformerConfig,
    TransformerStack,
    check_attention,
    init_weights,
    lm_logits,
    make_lm_head,
)
from .generation import generate


@dataclass(kw_only=True)
class DecoderLMConfig(TransformerConfig):
    kind = "decoder_lm"

    def validate(self, path: str = "") -> None:
        super().validate(path)
        check_attention(self, path, causal=True)


@MODEL.register(DecoderLMConfig)
class DecoderLM(nn.Module):
    """``model(input_ids) -> logits``; ``model.generate(prompt_ids, ...)`` decodes with a KV cache."""

    paper = "Radford et al., 2018/2019, GPT / GPT-2 (decoder-only Transformer language model)"

    def __init__(self, cfg: DecoderLMConfig):
        super().__init__()
        self.config = cfg
        self.transformer = TransformerStack(cfg, depth=cfg.depth, causal=True)
        self.lm_head = make_lm_head(cfg)
        init_weights(self, cfg.init_std, cfg.depth)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return lm_logits(h, self.lm_head, self.transformer.embed)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        cache: DecodeCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) logits (or (B, 1, V) with ``last_only``)."""
        h = self.transformer(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache
        )
        return self.logits(h[:, -1:] if last_only else h)

    @property
    def supports_kv_cache(self) -> bool:
        return self.transformer.supports_kv_cache

    @property
    def supports_static_cache(self) -> bool:
        return self.transformer.supports_static_cache

    def new_cache(self) -> DecodeCache:
        return DecodeCache(len(self.transformer.blocks))

    def generate(self, prompt_ids: Any, max_new_tokens: int = 64, **kwargs: Any) -> Any:
        """See :func:`formerlab.models.generation.generate`."""
        return generate(self, prompt_ids, max_new_tokens, **kwargs)
