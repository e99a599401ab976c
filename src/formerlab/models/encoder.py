"""Bidirectional encoder (BERT-style) with a configurable head.

With a pair head (``head.pair_input``, e.g. ``pair_classifier``) the encoder is a two-tower model:
``input_ids`` (B, 2, T) holds two documents per example; both go through the same weights as one
(2B, T) batch and the head returns (B, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import join, param
from ..errors import ConfigError, InputError
from ..layers.attention import AttentionConfig
from ..layers.attention.base import capability
from ..registry import HEAD, MODEL
from .base import TransformerConfig, TransformerStack, init_weights
from .heads import ClassifierHeadConfig, HeadConfig


@dataclass(kw_only=True)
class EncoderConfig(TransformerConfig):
    kind = "encoder"
    head: HeadConfig = param(factory=ClassifierHeadConfig, doc="output head")

    def check_task(self, task: Any, path: str = "model") -> None:
        """The base checks, and a pair head exactly when the task feeds document pairs."""
        super().check_task(task, path)
        pair_task = bool(getattr(task, "pair_input", False))
        if bool(getattr(self.head, "pair_input", False)) != pair_task:
            needs = "a pair head (pair_classifier)" if pair_task else "a single-sequence head"
            raise ConfigError(
                f"{join(path, 'head.kind')}: {self.head.kind!r} cannot train task "
                f"{getattr(task, 'kind', '?')!r}; allowed: {needs}"
            )


class HeadEncoder(nn.Module):
    """An encoder with a head around a stack built by the subclass (what ``encoder`` and
    ``looped`` share): ``encode(ids, mask) -> (B, T, D)``; ``model(ids, mask)`` applies the head."""

    def __init__(self, cfg: EncoderConfig, transformer: TransformerStack):
        super().__init__()
        self.config = cfg
        self.pair_input = bool(getattr(cfg.head, "pair_input", False))
        self.transformer = transformer
        self.head = build_head(cfg, transformer.embed)
        init_weights(self, cfg.init_std, cfg.depth)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_mask_support(self.config.attention, attention_mask)
        return self.transformer(input_ids, attention_mask=attention_mask)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return apply_head(self, input_ids, attention_mask)


@MODEL.register(EncoderConfig)
class Encoder(HeadEncoder):
    """``encode(ids, mask) -> (B, T, D)``; ``model(ids, mask)`` applies the head."""

    paper = "Devlin et al., 2018, BERT: Pre-training of Deep Bidirectional Transformers, arXiv:1810.04805"

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg, TransformerStack(cfg, depth=cfg.depth, causal=False))


def build_head(cfg: TransformerConfig, embedding: nn.Module) -> nn.Module:
    """The model's ``head`` (``cfg.head``) on hidden states of width ``dim``; a head that decodes
    tokens may share ``embedding``."""
    return HEAD.build(
        cfg.head, dim=cfg.dim, vocab_size=cfg.vocab_size, linear=cfg.linear, embedding=embedding
    )


def check_mask_support(attention: AttentionConfig, attention_mask: torch.Tensor | None) -> None:
    """InputError before any compute for a padding mask the attention kind cannot apply."""
    if attention_mask is not None and not capability(attention, "supports_padding_mask"):
        raise InputError(
            f"attention_mask: attention {attention.kind!r} lacks supports_padding_mask; "
            "pass unpadded batches"
        )


def apply_head(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **encode_args: Any,
) -> torch.Tensor:
    """An encoder's forward: document pairs flattened for a pair head (``model.pair_input``), then
    ``model.encode`` (with ``encode_args``), then ``model.head``."""
    if model.pair_input:
        input_ids, attention_mask = flatten_pairs(input_ids, attention_mask)
    return model.head(model.encode(input_ids, attention_mask, **encode_args), attention_mask)


def flatten_pairs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, 2, T) pairs -> (2B, T) documents (rows 2i, 2i+1 = pair i); InputError on other shapes."""
    if input_ids.dim() != 3 or input_ids.size(1) != 2:
        raise InputError(
            f"input_ids: shape {tuple(input_ids.shape)}; a pair head needs (batch, 2, seq)"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise InputError(
            f"attention_mask: shape {tuple(attention_mask.shape)}; expected the shape of "
            f"input_ids {tuple(input_ids.shape)}"
        )
    T = input_ids.size(-1)
    mask = attention_mask.reshape(-1, T) if attention_mask is not None else None
    return input_ids.reshape(-1, T), mask
