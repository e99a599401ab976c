"""Encoder output heads (registry group ``head``): ``HEAD.build(cfg, dim=, vocab_size=, linear=,
embedding=)``; ``forward(h, attention_mask) -> output``.

A head whose config sets ``pair_input = True`` (``pair_classifier``) reads two documents per example:
the encoder takes ``input_ids`` (B, 2, T), encodes them as (2B, T) and the head maps (2B, T, D) back
to (B, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..config import KindConfig, join, param
from ..errors import ConfigError, InputError
from ..layers.linear import LinearConfig, make_linear
from ..registry import HEAD


@dataclass(kw_only=True)
class HeadConfig(KindConfig):
    group: ClassVar[str] = "head"
    #: True: the head scores pairs of documents, so the encoder reads (B, 2, T) input_ids
    pair_input: ClassVar[bool] = False


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


@dataclass(kw_only=True)
class PairClassifierHeadConfig(_ClassesConfig):
    """Two-tower (dual encoder) pair classification: [u, v, u*v, u-v] through an MLP."""

    kind = "pair_classifier"
    pair_input: ClassVar[bool] = True
    pooling: Literal["cls", "mean"] = param("cls", doc="first token, or mean over real tokens")
    hidden: int | None = param(
        None, doc="width of the MLP's first hidden layer (the second is half of it); null: dim"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.hidden is not None and self.hidden < 2:
            raise ConfigError(
                f"{join(path, 'hidden')}: invalid value {self.hidden!r}; allowed: null or >= 2"
            )


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


@HEAD.register(PairClassifierHeadConfig)
class PairClassifierHead(nn.Module):
    """Scores a pair of documents encoded by the same tower (LRA Retrieval's dual encoder).

    Tay et al., 2021, "Long Range Arena: A Benchmark for Efficient Transformers", arXiv:2011.04006:
    each document is pooled to a vector (u for the first, v for the second), the classifier sees
    ``[u, v, u*v, u-v]`` (the NLI interaction) through dense -> ReLU -> dense (half width) -> ReLU ->
    dense. Input rows ``2i`` and ``2i+1`` of (2B, T, D) are the two documents of pair ``i`` (what
    ``(B, 2, T).reshape(2B, T)`` gives); the output is (B, num_classes).

    Differences from the paper: mean pooling averages over real tokens only (LRA's mean includes
    padding); the MLP width defaults to the model width (LRA's Retrieval config sets mlp_dim).
    """

    paper = (
        "Tay et al., 2021, Long Range Arena: A Benchmark for Efficient Transformers, "
        "arXiv:2011.04006"
    )

    def __init__(self, cfg, *, dim: int, vocab_size: int, linear: LinearConfig, embedding=None):
        super().__init__()
        self.config = cfg
        hidden = cfg.hidden or dim
        self.fc1 = make_linear(linear, 4 * dim, hidden, bias=True)
        self.fc2 = make_linear(linear, hidden, hidden // 2, bias=True)
        self.out = make_linear(linear, hidden // 2, cfg.num_classes, bias=True)

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One vector per document: (N, T, D) -> (N, D)."""
        return h[:, 0] if self.config.pooling == "cls" else mean_pool(h, attention_mask)

    @staticmethod
    def features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The interaction the MLP sees: (B, D), (B, D) -> (B, 4D) = [u, v, u*v, u-v]."""
        return torch.cat([u, v, u * v, u - v], dim=-1)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if h.dim() != 3 or h.size(0) % 2:
            raise InputError(
                f"pair_classifier: hidden states of shape {tuple(h.shape)}; expected (2B, T, D), "
                "rows 2i and 2i+1 the two documents of pair i"
            )
        pooled = self.pool(h, attention_mask).view(-1, 2, h.size(-1))  # (B, 2, D)
        x = self.features(pooled[:, 0], pooled[:, 1])  # (B, 4D)
        x = nn.functional.relu(self.fc1(x))
        x = nn.functional.relu(self.fc2(x))
        return self.out(x)  # (B, num_classes)
