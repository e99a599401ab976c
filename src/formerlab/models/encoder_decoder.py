"""Encoder-decoder Transformer (Vaswani et al., 2017): a bidirectional encoder, a causal decoder with
cross-attention, shared token embeddings; teacher-forced ``forward`` and cached ``generate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import join, param
from ..errors import ConfigError, InputError
from ..layers.attention import AttentionConfig, DecodeCache, SoftmaxAttentionConfig
from ..layers.attention.base import require
from ..registry import MODEL
from .base import (
    TransformerConfig,
    TransformerStack,
    check_attention,
    init_weights,
    lm_logits,
    make_lm_head,
)
from .generation import check_sampling, decode_loop, left_pad


@dataclass(kw_only=True)
class EncoderDecoderConfig(TransformerConfig):
    kind = "encoder_decoder"
    decoder_depth: int | None = param(None, doc="decoder blocks (null: same as depth)")
    cross_attention: AttentionConfig = param(
        factory=SoftmaxAttentionConfig, doc="attention kind of the decoder's cross-attention"
    )
    bos_token_id: int = param(0, doc="token the decoder starts from")

    def validate(self, path: str = "") -> None:
        super().validate(path)
        check_attention(self, path, causal=True)
        require(
            self.cross_attention,
            "supports_cross",
            join(path, "cross_attention"),
            "for cross-attention",
        )
        if self.decoder_depth is not None and self.decoder_depth < 1:
            raise ConfigError(f"{join(path, 'decoder_depth')}: {self.decoder_depth} must be >= 1")
        if self.layer_ffns is not None:
            raise ConfigError(
                f"{join(path, 'layer_ffns')}: per-block FFN configs are not supported by "
                "encoder_decoder yet; allowed: null"
            )
        if not 0 <= self.bos_token_id < self.vocab_size:
            raise ConfigError(
                f"{join(path, 'bos_token_id')}: {self.bos_token_id}; allowed: 0..{self.vocab_size - 1}"
            )


@MODEL.register(EncoderDecoderConfig)
class EncoderDecoder(nn.Module):
    """``model(src_ids, tgt_ids, src_mask, tgt_mask) -> (B, T_tgt, V)`` logits (teacher forcing)."""

    paper = "Vaswani et al., 2017, Attention Is All You Need, arXiv:1706.03762"

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = TransformerStack(cfg, depth=cfg.depth, causal=False)
        self.decoder = TransformerStack(
            cfg,
            depth=cfg.decoder_depth or cfg.depth,
            causal=True,
            cross=True,
            embedding=self.encoder.embed,
        )
        self.lm_head = make_lm_head(cfg)
        init_weights(self, cfg.init_std, cfg.depth + (cfg.decoder_depth or cfg.depth))

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(src_ids, attention_mask=src_mask)

    def decode(
        self,
        tgt_ids: torch.Tensor,
        memory: torch.Tensor,
        *,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
        cache: DecodeCache | None = None,
    ) -> torch.Tensor:
        h = self.decoder(
            tgt_ids, attention_mask=tgt_mask, cache=cache, context=memory, context_mask=src_mask
        )
        return lm_logits(h, self.lm_head, self.encoder.embed)

    def forward(
        self,
        src_ids: torch.Tensor,
        tgt_ids: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        tgt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        memory = self.encode(src_ids, src_mask)
        return self.decode(tgt_ids, memory, src_mask=src_mask, tgt_mask=tgt_mask)

    @property
    def supports_kv_cache(self) -> bool:
        return self.decoder.supports_kv_cache

    @torch.inference_mode()
    def generate(
        self,
        src_ids: torch.Tensor | list[list[int]],
        max_new_tokens: int = 64,
        *,
        src_mask: torch.Tensor | None = None,
        eos_token_id: int | None = None,
        seed: int | None = None,
        use_cache: bool = True,
        **sampling: Any,
    ) -> torch.Tensor:
        """Decode targets for a batch of sources; returns (B, 1 + max_new_tokens) starting with BOS."""
        check_sampling(
            max_new_tokens,
            sampling.get("temperature", 0.0),
            sampling.get("top_k"),
            sampling.get("top_p"),
        )
        if not isinstance(src_ids, torch.Tensor):
            src_ids, src_mask = left_pad(src_ids)
        if 1 + max_new_tokens > self.config.max_seq_len:
            raise InputError(
                f"max_new_tokens: {max_new_tokens} + BOS exceeds max_seq_len={self.config.max_seq_len}"
            )
        memory = self.encode(src_ids, src_mask)
        start = torch.full((src_ids.size(0), 1), self.config.bos_token_id, dtype=torch.long)
        cache = (
            DecodeCache(len(self.decoder.blocks)) if use_cache and self.supports_kv_cache else None
        )

        def step(x: torch.Tensor, _mask: Any, c: Any) -> torch.Tensor:
            return self.decode(x, memory, src_mask=src_mask, cache=c)[:, -1]

        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return decode_loop(
            step,
            start,
            None,
            cache,
            max_new_tokens,
            eos_token_id=eos_token_id,
            generator=generator,
            **sampling,
        )
