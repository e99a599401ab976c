"""Encoder output heads (registry group ``head``): ``HEAD.build(cfg, dim=, vocab_size=, linear=,
embedding=)``; ``forward(h, attention_mask) -> output``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..config import KindConfig, join, param
from ..errors import ConfigError
from ..layers.linear import LinearConfig, make_linear
from ..registry import HEAD


@dataclass(kw_only=True)
class HeadConfig(KindConfig):
    group: ClassVar[str] = "head"


@dataclass(kw_only=True)
class _ClassesConfig(HeadConfig):
    num_classes: int = param(2, doc="number of output classes")

    def validate(self, path: str = "") -> None:
        if self.num_classes < 1:
            raise ConfigError(f"{join(path, 'num_classes')}: {self.num_classes} must be >= 1")


@dataclass(kw_only=True)
class ClassifierHeadConfig(_ClassesConfig):
    kind = "classifier"
    pooling: Literal["cls", "mean"] = param("cls", doc="first token, or mean over real tokens")


@dataclass(kw_only=True)
class TokenClassifierHeadConfig(_ClassesConfig):
    kind = "token_classifier"


@dataclass(kw_only=True)
class MLMHeadConfig(HeadConfig):
    kind = "mlm"
    tie_embeddings: bool = param(True, doc="decode with the token embedding matrix")


@dataclass(kw_only=True)
class NoHeadConfig(HeadConfig):
    kind = "none"


def mean_pool(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over real tokens: (B, T, D), (B, T) bool -> (B, D)."""
    if mask is None:
        return h.mean(dim=1)
    w = mask.to(h.dtype)[..., None]
    return (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


@HEAD.register(ClassifierHeadConfig)
class ClassifierHead(nn.Module):
    """Sequence classification: pool (cls | mean), then a linear layer -> (B, num_classes)."""

    def __init__(self, cfg, *, dim: int, vocab_size: int, linear: LinearConfig, embedding=None):
        super().__init__()
        self.config = cfg
        self.proj = make_linear(linear, dim, cfg.num_classes, bias=True)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = h[:, 0] if self.config.pooling == "cls" else mean_pool(h, attention_mask)
        return self.proj(pooled)


@HEAD.register(TokenClassifierHeadConfig)
class TokenClassifierHead(nn.Module):
    """Per-token classification -> (B, T, num_classes)."""

    def __init__(self, cfg, *, dim: int, vocab_size: int, linear: LinearConfig, embedding=None):
        super().__init__()
        self.config = cfg
        self.proj = make_linear(linear, dim, cfg.num_classes, bias=True)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(h)


@HEAD.register(MLMHeadConfig)
class MLMHead(nn.Module):
    """Masked-LM head (BERT): dense + GELU + LayerNorm, then scores over the vocabulary."""

    paper = "Devlin et al., 2018, BERT, arXiv:1810.04805"

    def __init__(self, cfg, *, dim: int, vocab_size: int, linear: LinearConfig, embedding=None):
        super().__init__()
        self.config = cfg
        self.transform = make_linear(linear, dim, dim, bias=True)
        self.norm = nn.LayerNorm(dim)
        self.embedding = embedding if cfg.tie_embeddings else None
        self.decoder = (
            None if cfg.tie_embeddings else make_linear(linear, dim, vocab_size, bias=False)
        )
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(nn.functional.gelu(self.transform(h)))
        if self.decoder is not None:
            return self.decoder(h) + self.bias
        return nn.functional.linear(h, self.embedding.weight, self.bias)


@HEAD.register(NoHeadConfig)
class NoHead(nn.Module):
    """Returns the hidden states unchanged."""

    def __init__(self, cfg, *, dim: int, vocab_size: int, linear: LinearConfig, embedding=None):
        super().__init__()
        self.config = cfg

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return h
