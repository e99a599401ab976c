"""Local (sliding-window) attention: each token attends only the tokens within ``window`` of it.

Paper: "Long Range Arena: A Benchmark for Efficient Transformers", Yi Tay, Mostafa Dehghani, Samira
Abnar, Yikang Shen, Dara Bahri, Philip Pham, Jinfeng Rao, Liu Yang, Sebastian Ruder, Donald Metzler,
2020, arXiv:2011.04006 (its "Local Attention" baseline); the sliding form follows "Longformer: The
Long-Document Transformer", Iz Beltagy, Matthew E. Peters, Arman Cohan, 2020, arXiv:2004.05150.

Query ``i`` attends key ``j`` when ``|i - j| <= window`` (bidirectional) or ``0 <= i - j <= window``
(causal). :func:`formerlab.ops.banded.banded_attention` computes the scores block by block, so
time and memory grow as T * window, never T^2. Decoding keeps only the last ``window`` keys and
values of each layer, and equals the full forward.

Differences from the paper: LRA's local attention cuts the sequence into non-overlapping blocks that
attend only within themselves, so tokens at a block edge see one side only; here every token has its
own window centred on it (trailing it when causal), as in Longformer's sliding window. ``window`` is
the reach on each side, so a bidirectional row sees up to 2 * window + 1 keys (Longformer's w counts
both sides together).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import join, param
from ...errors import ConfigError
from ...ops.banded import banded_attention
from ...registry import ATTENTION
from .base import AttentionConfig
from .projected import ProjectedAttention


@dataclass(kw_only=True)
class LocalAttentionConfig(AttentionConfig):
    kind = "local"
    window: int = param(
        64,
        doc="reach on each side: query i sees keys j with |i - j| <= window "
        "(causal: 0 <= i - j <= window)",
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.window < 1:
            raise ConfigError(f"{join(path, 'window')}: {self.window}; allowed: an integer >= 1")


@dataclass
class WindowCache:
    """Decode state: the keys/values still reachable, the first one's position, how many seen."""

    k: torch.Tensor  # (B, H, kept, hd)
    v: torch.Tensor
    start: int
    length: int


@ATTENTION.register(LocalAttentionConfig)
class LocalAttention(ProjectedAttention):
    """Sliding-window attention with causal, padding-mask and windowed KV-cache support."""

    paper = (
        "Tay et al., 2020, Long Range Arena, arXiv:2011.04006 (sliding window: arXiv:2004.05150)"
    )
    supports_causal = True
    supports_padding_mask = True
    supports_kv_cache = True

    @property
    def reach(self) -> tuple[int, int]:
        """Positions a query may look back and ahead."""
        w = self.config.window
        return w, 0 if self.causal else w

    @property
    def dropout_p(self) -> float:
        return self.config.dropout if self.training else 0.0

    def extend(self, k: torch.Tensor, v: torch.Tensor, cache: dict | None):
        """Prepend the cached keys/values -> (keys, values, first key's position, first query's)."""
        state: WindowCache | None = cache.get("window") if cache is not None else None
        if state is None:
            return k, v, 0, 0
        return torch.cat([state.k, k], 2), torch.cat([state.v, v], 2), state.start, state.length

    def keep(
        self, cache: dict | None, k: torch.Tensor, v: torch.Tensor, start: int, n: int | None
    ) -> None:
        """Remember the last ``n`` keys/values (all when ``n`` is None) for the next call."""
        if cache is None:
            return
        drop = 0 if n is None else max(0, k.size(2) - n)
        length = start + k.size(2)
        cache["window"] = WindowCache(k[:, :, drop:], v[:, :, drop:], start + drop, length)

    def attend(self, q, k, v, *, key_mask, cache):
        k, v, k_start, q_start = self.extend(k, v, cache)  # (B, nh, S, hd), S = kept + T
        before, after = self.reach
        y = banded_attention(
            q,
            k,
            v,
            before=before,
            after=after,
            q_start=q_start,
            k_start=k_start,
            key_valid=None if key_mask is None else key_mask[:, k_start:],
            dropout_p=self.dropout_p,
        )  # (B, nh, T, hd)
        self.keep(cache, k, v, k_start, before)
        return y
