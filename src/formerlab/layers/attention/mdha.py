"""Multi-DConv-Head Attention (MDHA) from "Primer: Searching for Efficient Transformers for Language
Modeling", So, Mańke, Liu, Dai, Shazeer, Le, 2021, arXiv:2109.08668.

After the query, key and value projections, every channel (each head's each feature) goes
through its own causal depthwise convolution over the sequence, width 3: position t mixes the
projections of t-2, t-1 and t. The attention itself is unchanged softmax attention (this class
subclasses the ``softmax`` kind and reuses its kernel, including grouped-query heads and the KV
cache). Decoding keeps the convolution's last ``kernel_size - 1`` inputs in the layer cache, so a
cached decode computes exactly what the full forward does.

Differences from the paper: the width is configurable (``kernel_size``, default 3 as in Primer); the
kernel can start as the identity (``kernel_init: identity``, MDHA then begins as plain softmax
attention) or with PyTorch's ``Conv1d`` default initialisation (``random``, the default). With a
padding mask, padded positions feed zeros into the convolution (as the zero left-padding at the
start of a sequence does), so padded batches equal unpadded sequences exactly. Rotary positions,
when configured, are applied after the convolution. No cross-attention form (Primer has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...config import join, param
from ...errors import ConfigError
from ...registry import ATTENTION
from .softmax import SoftmaxAttention, SoftmaxAttentionConfig


@dataclass(kw_only=True)
class MDHAConfig(SoftmaxAttentionConfig):
    kind = "mdha"
    kernel_size: int = param(3, doc="width of the causal depthwise convolution (Primer: 3)")
    kernel_init: Literal["random", "identity"] = param(
        "random", doc="initial kernel: Conv1d's default (random) or pass-through (identity)"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.kernel_size < 1:
            raise ConfigError(
                f"{join(path, 'kernel_size')}: invalid value {self.kernel_size}; allowed: >= 1"
            )


def causal_depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, past: torch.Tensor
) -> torch.Tensor:
    """(B, T, C) inputs, (C, K) kernel, (C,) bias, (B, K-1, C) earlier inputs -> (B, T, C).

    ``y[t] = bias + sum_i weight[:, i] * x[t - (K - 1) + i]``; inputs before the first of ``x`` come
    from ``past`` (zeros at the start of a sequence).
    """
    K, T = weight.size(1), x.size(1)
    padded = torch.cat([past, x], dim=1)  # (B, K-1+T, C)
    y = bias.expand_as(x)
    for i in range(K):
        y = y + padded[:, i : i + T] * weight[:, i]
    return y


@ATTENTION.register(MDHAConfig)
class MDHAttention(SoftmaxAttention):
    """Softmax attention whose q, k, v pass through per-channel causal convolutions (width 3)."""

    supports_static_cache = False  # its convolutions keep their own past inputs

    paper = "So et al., 2021, Primer: Searching for Efficient Transformers, arXiv:2109.08668"
    supports_cross = False

    def __init__(self, cfg: MDHAConfig, **dims):
        super().__init__(cfg, **dims)
        if self.cross:
            raise ConfigError(f"kind: attention {cfg.kind!r} lacks supports_cross")
        channels = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        K = cfg.kernel_size
        self.conv_weight = nn.Parameter(torch.empty(channels, K))  # (C, K), one kernel per channel
        self.conv_bias = nn.Parameter(torch.zeros(channels))
        if cfg.kernel_init == "identity":
            with torch.no_grad():
                self.conv_weight.zero_()[:, -1] = 1.0
        else:  # nn.Conv1d's default: kaiming-uniform weight and bias, fan_in = K per channel
            bound = 1 / math.sqrt(K)
            nn.init.uniform_(self.conv_weight, -bound, bound)
            nn.init.uniform_(self.conv_bias, -bound, bound)

    def convolve(
        self, h: torch.Tensor, key_mask: torch.Tensor | None, cache: dict | None
    ) -> torch.Tensor:
        """(B, T, C) projections -> convolved; the last K-1 inputs are kept in ``cache``."""
        B, T, C = h.shape
        if key_mask is not None:  # padded positions feed zeros, like the start of a sequence
            h = h * key_mask[:, -T:, None].to(h.dtype)
        K = self.conv_weight.size(1)
        past = None if cache is None else cache.get("conv_past")
        if past is None:
            past = h.new_zeros(B, K - 1, C)
        if cache is not None:
            cache["conv_past"] = torch.cat([past, h], dim=1)[:, h.size(1) :]
        return causal_depthwise_conv(h, self.conv_weight, self.conv_bias, past)

    def project(self, x, context, cache, key_mask=None):
        return self.split_qkv(self.convolve(self.qkv_proj(x), key_mask, cache))
