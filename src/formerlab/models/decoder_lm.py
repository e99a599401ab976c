"""Decoder-only language model (GPT-style): causal stack + output head over the vocabulary.

:class:`CausalLM` is the language-model plumbing every causal kind shares (``decoder_lm``,
``looped_lm``): the LM head on the stack's embedding, ``forward`` to logits, the KV-cache queries and
``generate``; :class:`LMLogits` is its logits part alone (``fit`` in mode ``decoder_lm`` uses it)."""

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


class LMLogits:
    """``logits(h)``: vocabulary logits for a model with ``lm_head`` (None: tied) and
    ``transformer.embed``."""

    lm_head: nn.Module | None
    transformer: TransformerStack

    def logits(self, h: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T, D) hidden states -> (B, T, V) logits (of the last position only: (B, 1, V))."""
        return lm_logits(h[:, -1:] if last_only else h, self.lm_head, self.transformer.embed)


class CausalLM(LMLogits, nn.Module):
    """A causal LM around a stack built by the subclass: ``model(input_ids) -> logits``;
    ``model.generate(prompt_ids, ...)`` decodes with a KV cache where the stack supports one."""

    def __init__(self, cfg: TransformerConfig, transformer: TransformerStack):
        super().__init__()
        self.config = cfg
        self.transformer = transformer
        self.lm_head = make_lm_head(cfg)
        init_weights(self, cfg.init_std, cfg.depth)

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
        return self.lm_forward(
            input_ids, attention_mask, position_ids=position_ids, cache=cache, last_only=last_only
        )

    def lm_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        last_only: bool = False,
        **stack_args: Any,
    ) -> torch.Tensor:
        """``forward`` with ``stack_args`` passed on to the stack (``loops`` for ``looped_lm``)."""
        h = self.transformer(input_ids, attention_mask=attention_mask, **stack_args)
        return self.logits(h, last_only)

    @property
    def supports_kv_cache(self) -> bool:
        return self.transformer.supports_kv_cache

    def new_cache(self) -> DecodeCache:
        return DecodeCache(len(self.transformer.blocks))

    def generate(self, prompt_ids: Any, max_new_tokens: int = 64, **kwargs: Any) -> Any:
        """See :func:`formerlab.models.generation.generate`."""
        return generate(self, prompt_ids, max_new_tokens, **kwargs)


@MODEL.register(DecoderLMConfig)
class DecoderLM(CausalLM):
    """``model(input_ids) -> logits``; ``model.generate(prompt_ids, ...)`` decodes with a KV cache."""

    paper = "Radford et al., 2018/2019, GPT / GPT-2 (decoder-only Transformer language model)"

    def __init__(self, cfg: DecoderLMConfig):
        super().__init__(cfg, TransformerStack(cfg, depth=cfg.depth, causal=True))

    @property
    def supports_static_cache(self) -> bool:
        return self.transformer.supports_static_cache
