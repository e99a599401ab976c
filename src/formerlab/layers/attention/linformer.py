"""Linformer attention: "Linformer: Self-Attention with Linear Complexity", Sinong Wang, Belinda Z. Li,
Madian Khabsa, Han Fang, Hao Ma, 2020, arXiv:2006.04768.

Keys and values are projected along the sequence to a fixed length ``k`` by learned ``k x n`` matrices
(``n = max_seq_len``): ``head = softmax(Q (E K)^T / sqrt(d)) (F V)``, so the score matrix is T x k and
time and memory grow linearly with T. An input shorter than n uses the first T columns of E and F.
Sharing (the paper's §4): ``none`` (E_h, F_h per head), ``headwise`` (one E and one F per layer) or
``key_value`` (a single E = F per layer). Padded keys are excluded before the projection: each real key
takes the column of its position among the real keys and padded ones contribute nothing, so a padded
sequence (left, right or in between) projects exactly as it would alone.

Mixing every position into each projected key is why Linformer is bidirectional only: it declares no
causal support and no KV cache, and a decoder configured with it fails with a ConfigError.

Differences from the paper: layer-wise sharing (one E across all layers) is not offered, since each
attention layer owns its parameters; E and F start from Xavier-uniform with gain 1/sqrt(2), as in the
authors' fairseq code; the paper's optional non-uniform k per layer is not offered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ...config import join, param
from ...errors import ConfigError, InputError
from ...ops.masks import positions_from_mask
from ...registry import ATTENTION
from .base import AttentionConfig
from .projected import ProjectedAttention


@dataclass(kw_only=True)
class LinformerConfig(AttentionConfig):
    kind = "linformer"
    k: int = param(64, doc="projected sequence length (the paper's k)")
    sharing: Literal["none", "headwise", "key_value"] = param(
        "headwise",
        doc="projection sharing: none (per head), headwise (E, F per layer), key_value (E = F)",
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.k < 1:
            raise ConfigError(f"{join(path, 'k')}: invalid value {self.k}; allowed: >= 1")


@ATTENTION.register(LinformerConfig)
class LinformerAttention(ProjectedAttention):
    """softmax(Q (E K)^T / sqrt(d)) (F V) per head, with E, F learned k x max_seq_len projections."""

    paper = (
        "Wang, Li, Khabsa, Fang, Ma, 2020, Linformer: Self-Attention with Linear Complexity, "
        "arXiv:2006.04768"
    )
    supports_causal = False
    supports_padding_mask = True
    supports_kv_cache = False

    def __init__(self, cfg: LinformerConfig, **dims):
        super().__init__(cfg, **dims)
        groups = self.num_heads if cfg.sharing == "none" else 1
        self.key_seq_proj = self._projection(groups, cfg.k)  # E: (G, k, n)
        shared = cfg.sharing == "key_value"
        self.value_seq_proj = None if shared else self._projection(groups, cfg.k)  # F

    def _projection(self, groups: int, k: int) -> nn.Parameter:
        bound = math.sqrt(3.0 / (k + self.max_seq_len))  # Xavier uniform, gain 1/sqrt(2)
        return nn.Parameter(torch.empty(groups, k, self.max_seq_len).uniform_(-bound, bound))

    def seq_project(
        self, proj: torch.Tensor, x: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Project (B, nh, S, hd) along the sequence with (G, k, n) -> (B, nh, k, hd)."""
        S = x.size(2)
        if key_mask is None:
            return proj[:, :, :S] @ x  # (G, k, S) @ (B, nh, S, hd)
        cols = positions_from_mask(key_mask)  # (B, S): index of each key among the real ones
        e = proj[:, :, cols].permute(2, 0, 1, 3)  # (B, G, k, S)
        e = e * key_mask[:, None, None, :].to(e.dtype)  # padded keys contribute nothing
        return e @ x

    def attend(self, q, k, v, *, key_mask, cache):
        if k.size(2) > self.max_seq_len:
            raise InputError(
                f"linformer: {k.size(2)} keys exceed max_seq_len={self.max_seq_len}, the width of "
                "its sequence projections"
            )
        value_proj = self.key_seq_proj if self.value_seq_proj is None else self.value_seq_proj
        k = self.seq_project(self.key_seq_proj, k, key_mask)  # (B, nh, k, hd)
        v = self.seq_project(value_proj, v, key_mask)
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.config.dropout if self.training else 0.0
        )  # (B, nh, T, hd)
