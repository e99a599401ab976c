"""The ``attention`` group: configs, declared capabilities and the build entry point.

Built as ``build_attention(cfg, dim=..., num_heads=..., causal=..., max_seq_len=..., linear=...,
cross=False)``. ``forward(x, *, attention_mask=None, rotary=None, cache=None, context=None,
context_mask=None) -> (B, T, D)``; ``attention_mask`` is (B, S) bool over all keys (cached ones
included), True = real token; ``cache`` is a per-layer ``dict`` the attention keeps its decode state in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ...config import KindConfig, join, param
from ...errors import ConfigError
from ...registry import ATTENTION
from ..linear import LinearConfig


@dataclass(kw_only=True)
class AttentionConfig(KindConfig):
    group: ClassVar[str] = "attention"
    dropout: float = param(0.0, doc="dropout on the attention probabilities")
    bias: bool = param(True, doc="biases in the query/key/value/output projections")
    head_dim: int | None = param(
        None,
        doc="width of each head; null: dim / num_heads. Set it to widen attention beyond the "
        "model width (heads x head_dim != dim), e.g. one wide layer with many heads",
    )
    linear: LinearConfig | None = param(
        None, doc="linear kind of this attention's projections; null: the model's `linear`"
    )

    def validate(self, path: str = "") -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{join(path, 'dropout')}: {self.dropout}; allowed: 0 <= p < 1")
        if self.head_dim is not None and self.head_dim < 1:
            raise ConfigError(
                f"{join(path, 'head_dim')}: {self.head_dim}; allowed: null or an int >= 1"
            )


class Attention(nn.Module):
    """Base class: subclasses set the capability flags they really have."""

    supports_causal: ClassVar[bool] = False
    supports_padding_mask: ClassVar[bool] = False
    supports_kv_cache: ClassVar[bool] = False
    supports_packed: ClassVar[bool] = False
    supports_cross: ClassVar[bool] = False


def capability(cfg: AttentionConfig, name: str) -> bool:
    return bool(getattr(ATTENTION.entry(cfg.kind).impl, name))


def require(cfg: AttentionConfig, name: str, path: str, why: str) -> None:
    """ConfigError naming the part and the capability it lacks (DESIGN rule 4)."""
    if not capability(cfg, name):
        raise ConfigError(
            f"{join(path, 'kind')}: attention {cfg.kind!r} lacks {name}, needed {why}"
        )


def build_attention(cfg: AttentionConfig, **dims: Any) -> Attention:
    return ATTENTION.build(cfg, **dims)
