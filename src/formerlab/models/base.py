"""Shared model config fields and the embedding → blocks → final-norm stack every model uses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..config import KindConfig, join, param
from ..errors import ConfigError, InputError
from ..layers.attention import AttentionConfig, DecodeCache, SoftmaxAttentionConfig
from ..layers.attention.base import require
from ..layers.block import TransformerBlock
from ..layers.embedding import EmbeddingConfig, TokenEmbeddingConfig
from ..layers.ffn import FFNConfig, MLPConfig
from ..layers.linear import DenseConfig, LinearConfig
from ..layers.norm import LayerNormConfig, NormConfig
from ..layers.position import LearnedPositionConfig, PositionConfig
from ..ops.masks import positions_from_mask
from ..registry import EMBEDDING, NORM, POSITION


@dataclass(kw_only=True)
class ModelConfig(KindConfig):
    group: ClassVar[str] = "model"
    max_seq_len: int = param(256, doc="longest sequence the model accepts")

    def check_task(self, task: Any, path: str = "model") -> None:
        seq_len = getattr(task, "seq_len", None)
        if seq_len is not None and self.max_seq_len < seq_len:
            raise ConfigError(
                f"{join(path, 'max_seq_len')}: {self.max_seq_len} is shorter than "
                f"task.seq_len={seq_len}; allowed: >= {seq_len}"
            )


@dataclass(kw_only=True)
class TransformerConfig(ModelConfig):
    """Fields shared by decoder, encoder and encoder-decoder models (DESIGN §5)."""

    vocab_size: int = param(256, doc="number of token ids")
    dim: int = param(256, doc="model width")
    depth: int = param(4, doc="number of blocks")
    num_heads: int = param(4, doc="attention heads")
    attention: AttentionConfig = param(factory=SoftmaxAttentionConfig, doc="attention kind")
    norm: NormConfig = param(factory=LayerNormConfig, doc="normalisation kind")
    norm_placement: Literal["pre", "post"] = param("pre", doc="where each block normalises")
    ffn: FFNConfig = param(factory=MLPConfig, doc="feed-forward kind")
    position: PositionConfig = param(factory=LearnedPositionConfig, doc="position kind")
    linear: LinearConfig = param(factory=DenseConfig, doc="linear kind of every projection")
    embedding: EmbeddingConfig = param(factory=TokenEmbeddingConfig, doc="token embedding kind")
    tie_embeddings: bool = param(True, doc="output head shares the token embedding matrix")
    dropout: float = param(0.0, doc="dropout on embeddings and residual branches")
    init_std: float = param(0.02, doc="std of the normal initialisation of weights")

    def validate(self, path: str = "") -> None:
        for name in ("vocab_size", "dim", "depth", "num_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{join(path, name)}: {getattr(self, name)} must be >= 1")
        if self.dim % self.num_heads:
            raise ConfigError(
                f"{join(path, 'dim')}: {self.dim} is not divisible by num_heads={self.num_heads}; "
                f"allowed: a multiple of {self.num_heads}"
            )
        kv = getattr(self.attention, "num_kv_heads", None)
        if kv is not None and self.num_heads % kv:
            raise ConfigError(
                f"{join(path, 'attention.num_kv_heads')}: {kv} does not divide "
                f"num_heads={self.num_heads}; allowed: a divisor of {self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{join(path, 'dropout')}: {self.dropout}; allowed: 0 <= p < 1")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


class TransformerStack(nn.Module):
    """Token embedding + positions → ``depth`` blocks → final norm (pre-norm models only)."""

    def __init__(
        self,
        cfg: TransformerConfig,
        *,
        depth: int,
        causal: bool,
        cross: bool = False,
        embedding: nn.Module | None = None,
    ):
        super().__init__()
        self.config, self.causal = cfg, causal
        self.embed = embedding or EMBEDDING.build(
            cfg.embedding, vocab_size=cfg.vocab_size, dim=cfg.dim
        )
        self.position = POSITION.build(
            cfg.position, dim=cfg.dim, head_dim=cfg.head_dim, max_seq_len=cfg.max_seq_len
        )
        self.dropout = cfg.dropout
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, causal=causal, cross=cross) for _ in range(depth)
        )
        pre = cfg.norm_placement == "pre"
        self.final_norm = NORM.build(cfg.norm, dim=cfg.dim) if pre else nn.Identity()

    def check_input(self, input_ids: torch.Tensor, offset: int = 0) -> None:
        """Raise InputError before any compute for bad ids or too-long sequences."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int, torch.int16):
            raise InputError(
                f"input_ids: expected a (batch, seq) integer tensor, got shape "
                f"{tuple(input_ids.shape)} dtype {input_ids.dtype}"
            )
        vocab = self.config.vocab_size
        if input_ids.numel():
            low, high = (int(v) for v in torch.aminmax(input_ids))
            if low < 0 or high >= vocab:
                bad = high if high >= vocab else low
                raise InputError(f"input_ids: token id {bad} out of range; allowed: 0..{vocab - 1}")
        end = offset + input_ids.size(1)
        if end > self.config.max_seq_len:
            raise InputError(
                f"input_ids: sequence length {end} exceeds max_seq_len={self.config.max_seq_len}"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DecodeCache | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        offset = cache.length if cache is not None else 0
        self.check_input(input_ids, offset)
        T = input_ids.size(1)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, -T:]
            else:
                position_ids = torch.arange(offset, offset + T, device=input_ids.device)
        x = self.position(self.embed(input_ids), position_ids)
        if self.dropout:
            x = nn.functional.dropout(x, self.dropout, self.training)
        rotary = self.position.rotary(position_ids, x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                attention_mask=attention_mask,
                rotary=rotary,
                cache=cache[i] if cache is not None else None,
                context=context,
                context_mask=context_mask,
            )
        if cache is not None:
            cache.length = offset + T
        return self.final_norm(x)

    @property
    def supports_kv_cache(self) -> bool:
        return all(getattr(b.attn, "supports_kv_cache", False) for b in self.blocks)


def check_attention(cfg: TransformerConfig, path: str, *, causal: bool) -> None:
    """Capabilities a model needs from its attention kind, checked when the config is validated."""
    if causal:
        require(cfg.attention, "supports_causal", join(path, "attention"), "by a causal model")


def init_weights(model: nn.Module, std: float, depth: int) -> None:
    """Normal(0, std) for linear and embedding weights, zero biases; projections that write into the
    residual stream (``residual_out``) get std / sqrt(2 * depth) (GPT-2's scaled initialisation)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            scale = 1 / math.sqrt(2 * depth) if getattr(module, "residual_out", False) else 1.0
            nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
