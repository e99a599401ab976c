"""One Transformer layer: self-attention, optional cross-attention and a feed-forward, each wrapped in
a residual connection whose normalisation is placed as the model config says (``norm_placement``):

- ``pre``:  x + f(norm(x))                     (GPT-2, most LMs)
- ``post``: norm(x + f(x))                     (the original Transformer, BERT)
- ``peri``: x + norm_out(f(norm_in(x)))        (Peri-LN: Kim et al., 2025, "Peri-LN: Revisiting
  Normalization Layer in the Transformer Architecture", arXiv:2502.02732; a second norm of the same
  kind on every sublayer's output, before the residual add)

Stream ports. A norm kind with ``compressed_stream`` (``crmsnorm``) keeps the residual stream in
``dim - 1`` coordinates, so the projections that read the stream lose their last input column and the
ones that write into it lose their last output row. :func:`stream_ports` names those projections for
a sublayer: a sublayer module may declare ``stream_ports = (inputs, outputs)`` (dotted submodule
names; the sublayer output must be a linear combination of the outputs' results); attention kinds
built on ``ProjectedAttention`` and the ``mlp`` FFN are known here. The Pre-LN → Pre-(C)RMSNorm
conversions use the same ports to fold norms and recentre outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import join
from ..errors import ConfigError
from ..registry import FFN, NORM
from .attention import build_attention
from .attention.projected import ProjectedAttention
from .ffn.mlp import MLP

Ports = tuple[tuple[str, ...], tuple[str, ...]]

#: projections of ProjectedAttention kinds that read the block input (gate_proj: the gated kind)
_ATTENTION_INPUTS = ("qkv_proj", "q_proj", "gate_proj")


def stream_ports(sublayer: nn.Module) -> Ports | None:
    """(inputs, outputs): names of the projections reading / writing the residual stream, or None
    when the sublayer kind does not say."""
    declared = getattr(sublayer, "stream_ports", None)
    if declared is not None:
        inputs, outputs = declared
        return tuple(inputs), tuple(outputs)
    if isinstance(sublayer, ProjectedAttention):
        inputs = tuple(
            n for n in _ATTENTION_INPUTS if isinstance(getattr(sublayer, n, None), nn.Module)
        )
        return inputs, ("out_proj",)
    if type(sublayer) is MLP:
        return ("fc1",), ("fc2",)
    return None


def require_ports(sublayer: nn.Module, path: str, why: str) -> Ports:
    """:func:`stream_ports`, or a ConfigError naming the part that lacks them."""
    ports = stream_ports(sublayer)
    if ports is None:
        kind = getattr(getattr(sublayer, "config", None), "kind", type(sublayer).__name__)
        raise ConfigError(
            f"{join(path, 'kind')}: {kind!r} does not declare its stream ports (the projections "
            f"that read and write the residual stream), needed {why}; allowed: attention kinds "
            "built on ProjectedAttention, ffn 'mlp', or a kind that sets `stream_ports`"
        )
    return ports


def _shrink(linear: nn.Module, side: str, path: str) -> None:
    """Drop the last input column (``side="in"``) or output row (``"out"``) of a dense projection."""
    if not isinstance(linear, nn.Linear):
        raise ConfigError(
            f"{path}: {type(linear).__name__} is not a dense linear layer; allowed with a "
            "compressed stream (crmsnorm): linear kind 'dense'"
        )
    with torch.no_grad():
        if side == "in":
            linear.weight = nn.Parameter(
                linear.weight[:, :-1].clone(memory_format=torch.contiguous_format)
            )
            linear.in_features -= 1
        else:
            linear.weight = nn.Parameter(linear.weight[:-1].clone())
            if linear.bias is not None:
                linear.bias = nn.Parameter(linear.bias[:-1].clone())
            linear.out_features -= 1


def compress_ports(sublayer: nn.Module, path: str) -> None:
    """Resize a freshly built sublayer's stream ports for a ``dim - 1`` (compressed) stream."""
    inputs, outputs = require_ports(sublayer, path, "by a compressed stream (norm kind crmsnorm)")
    for name in inputs:
        _shrink(sublayer.get_submodule(name), "in", f"{path}.{name}")
    for name in outputs:
        _shrink(sublayer.get_submodule(name), "out", f"{path}.{name}")


def part_linear(part: Any, model: Any) -> Any:
    """The linear kind of a part's projections: its own ``linear`` override, else the model's."""
    own = getattr(part, "linear", None)
    return own if own is not None else model.linear


class TransformerBlock(nn.Module):
    """Wires the configured attention, FFN and norms; knows nothing about any particular kind."""

    def __init__(self, cfg: Any, *, causal: bool, cross: bool = False, ffn: Any = None):
        """``ffn``: this block's FFN config (per-block ``layer_ffns``); None: ``cfg.ffn``."""
        super().__init__()
        dims = dict(dim=cfg.dim, num_heads=cfg.num_heads, max_seq_len=cfg.max_seq_len)
        self.placement = cfg.norm_placement
        self.attn_norm = self._norm(cfg)
        self.attn = build_attention(
            cfg.attention, causal=causal, linear=part_linear(cfg.attention, cfg), **dims
        )
        self.attn_out_norm = self._out_norm(cfg)
        self.cross_norm = self._norm(cfg) if cross else None
        self.cross_attn = (
            build_attention(
                cfg.cross_attention,
                causal=False,
                cross=True,
                linear=part_linear(cfg.cross_attention, cfg),
                **dims,
            )
            if cross
            else None
        )
        self.cross_out_norm = self._out_norm(cfg) if cross else None
        self.ffn_norm = self._norm(cfg)
        ffn = ffn or cfg.ffn
        self.ffn = FFN.build(ffn, dim=cfg.dim, linear=part_linear(ffn, cfg))
        self.ffn_out_norm = self._out_norm(cfg)
        self.dropout = cfg.dropout  # functional, and skipped entirely when 0 (decode speed)
        if cfg.norm.compressed_stream:
            compress_ports(self.attn, "model.attention")
            if self.cross_attn is not None:
                compress_ports(self.cross_attn, "model.cross_attention")
            compress_ports(self.ffn, "model.ffn")

    @staticmethod
    def _norm(cfg: Any) -> nn.Module:
        return NORM.build(cfg.norm, dim=cfg.dim)

    def _out_norm(self, cfg: Any) -> nn.Module | None:
        return self._norm(cfg) if self.placement == "peri" else None

    def _residual(
        self,
        x: torch.Tensor,
        norm: nn.Module,
        out_norm: nn.Module | None,
        fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        if self.placement == "pre":
            return x + self._drop(fn(norm(x)))
        if self.placement == "peri":
            return x + self._drop(out_norm(fn(norm(x))))
        return norm(x + self._drop(fn(x)))

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(y, self.dropout, self.training) if self.dropout else y

    def forward(
        self,
        x: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: dict | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self._residual(
            x,
            self.attn_norm,
            self.attn_out_norm,
            lambda h: self.attn(h, attention_mask=attention_mask, rotary=rotary, cache=cache),
        )
        if self.cross_attn is not None:
            cross_cache = cache.setdefault("cross", {}) if cache is not None else None
            x = self._residual(
                x,
                self.cross_norm,
                self.cross_out_norm,
                lambda h: self.cross_attn(
                    h, context=context, context_mask=context_mask, cache=cross_cache
                ),
            )
        return self._residual(x, self.ffn_norm, self.ffn_out_norm, self.ffn)
