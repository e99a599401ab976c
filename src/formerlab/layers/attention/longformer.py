"""Longformer attention: a (dilated) sliding window plus a few global tokens.

Paper: "Longformer: The Long-Document Transformer", Iz Beltagy, Matthew E. Peters, Arman Cohan,
2020, arXiv:2004.05150.

Every token attends its window (keys ``j`` with ``i - j`` a multiple of ``dilation`` and at most
``window * dilation`` away; causal: only behind it) and every global token; a global token attends
every key (causal: every earlier key). Global tokens sit at real-token positions, counted without
padding: the first ``num_global`` ones (a CLS token) and any listed in ``global_positions``. The
window part runs through the blocked kernel of :mod:`formerlab.ops.banded` with the global keys as
extra keys, and the few global rows are computed in full, so nothing is T x T: O(T * (window + G)).
Decoding keeps every key until each sequence has passed its last global position (a global row needs
all keys before it), then only the last ``window * dilation`` keys plus the global ones.

Differences from the paper: the paper gives global attention its own query/key/value projections;
here the global rows reuse the layer's projections. It varies the window per layer and dilates only
some heads of the upper layers; here one ``window`` and ``dilation`` hold for every head and layer
(use different configs per model to vary them). ``window`` is the reach on each side (the paper's w
spans both sides). The paper's custom CUDA kernel is replaced by blocked dense tensor code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...config import join, param
from ...errors import ConfigError
from ...ops.banded import ExtraKeys, banded_attention, masked_softmax
from ...registry import ATTENTION
from .local import LocalAttention, LocalAttentionConfig


@dataclass(kw_only=True)
class LongformerAttentionConfig(LocalAttentionConfig):
    kind = "longformer"
    dilation: int = param(1, doc="gap between the window's keys (1 = contiguous window)")
    num_global: int = param(1, doc="the first k real tokens are global (1 = a leading CLS token)")
    global_positions: list[int] = param(
        factory=list, doc="more global tokens, as 0-based positions among the real tokens"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.dilation < 1:
            raise ConfigError(
                f"{join(path, 'dilation')}: {self.dilation}; allowed: an integer >= 1"
            )
        if self.num_global < 0:
            raise ConfigError(
                f"{join(path, 'num_global')}: {self.num_global}; allowed: an integer >= 0"
            )
        bad = [p for p in self.global_positions if p < 0]
        if bad:
            raise ConfigError(
                f"{join(path, 'global_positions')}: {bad[0]}; allowed: positions >= 0"
            )

    def positions(self) -> list[int]:
        """Sorted global positions: the first ``num_global`` and the listed ones."""
        return sorted(set(range(self.num_global)) | set(self.global_positions))


@ATTENTION.register(LongformerAttentionConfig)
class LongformerAttention(LocalAttention):
    """Sliding window + global tokens; causal, padding masks and a KV cache supported."""

    paper = (
        "Beltagy, Peters and Cohan, 2020, Longformer: The Long-Document Transformer, "
        "arXiv:2004.05150"
    )

    def __init__(self, cfg: LongformerAttentionConfig, **dims):
        super().__init__(cfg, **dims)
        positions = cfg.positions()
        if positions and positions[-1] >= self.max_seq_len:
            raise ConfigError(
                f"attention.global_positions: {positions[-1]} is past max_seq_len="
                f"{self.max_seq_len}; allowed: 0..{self.max_seq_len - 1}"
            )
        self.register_buffer("global_pos", torch.tensor(positions, dtype=torch.long), False)

    def global_slots(self, key_mask: torch.Tensor | None, total: int, batch: int):
        """Sequence index (B, G) of each global token among ``total`` keys, and if it exists."""
        pos = self.global_pos.expand(batch, -1)
        if key_mask is not None:
            # the real token of position p is where the running count of real tokens reaches p + 1
            count = key_mask.long().cumsum(-1)
            pos = torch.searchsorted(count, (pos + 1).contiguous())
        return pos, pos < total

    def global_keys(self, k, v, idx, found, k_start, cache):
        """(B, H, G, hd) global keys/values: from this call's keys where there, else the cache."""
        at = (idx - k_start).clamp(0, k.size(2) - 1)  # (B, G); slots not here are overwritten
        at = at[:, None, :, None].expand(-1, k.size(1), -1, k.size(3))
        gk, gv = k.gather(2, at), v.gather(2, at)
        old = cache.get("global_kv") if cache is not None else None
        if old is not None:
            here = (found & (idx >= k_start))[:, None, :, None]
            gk, gv = torch.where(here, gk, old[0]), torch.where(here, gv, old[1])
        if cache is not None:
            cache["global_kv"] = (gk, gv)
        return gk, gv

    def attend(self, q, k, v, *, key_mask, cache):
        k, v, k_start, q_start = self.extend(k, v, cache)  # (B, nh, S, hd), S = kept + T
        B, _, S, _ = k.shape
        idx, found = self.global_slots(key_mask, k_start + S, B)  # (B, G)
        kpos = torch.arange(k_start, k_start + S, device=k.device)
        valid = torch.ones(B, S, dtype=torch.bool, device=k.device)
        if key_mask is not None:
            valid = key_mask[:, k_start:].bool()  # (B, S)
        is_global = (kpos[None, :, None] == idx[:, None, :]).any(-1)  # (B, S)
        seen = self.global_seen(idx, found, q_start, q.size(2))  # (B, 1, T, G)
        extra = ExtraKeys(*self.global_keys(k, v, idx, found, k_start, cache), seen)
        before, after = self.reach
        y = banded_attention(
            q,
            k,
            v,
            before=before,
            after=after,
            q_start=q_start,
            k_start=k_start,
            key_valid=valid & ~is_global,  # global keys enter once, as extra keys
            dilation=self.config.dilation,
            extra=extra,
            dropout_p=self.dropout_p,
        )  # (B, nh, T, hd)
        rows = found & (idx >= q_start)  # global tokens among this call's queries
        if bool(rows.any()):
            y = self.global_rows(q, k, v, y, (idx, rows, q_start), valid, kpos)
        done = bool(found.all())  # no global row will need the old keys again
        self.keep(cache, k, v, k_start, before * self.config.dilation if done else None)
        return y

    def global_seen(self, idx, found, q_start: int, T: int) -> torch.Tensor:
        """(B, 1, T, G): which global keys each query sees (causal: those not after it)."""
        seen = found[:, None, None, :].expand(-1, -1, T, -1)
        if not self.causal:
            return seen
        qpos = torch.arange(q_start, q_start + T, device=idx.device)
        return seen & (idx[:, None, None, :] <= qpos[None, None, :, None])

    def global_rows(self, q, k, v, y, slots, valid, kpos):
        """Replace the rows of global queries with attention over every key (causal: every earlier).

        ``slots``: (idx (B, G) sequence index, rows (B, G) whether among the queries, q_start).
        """
        (idx, rows, q_start), (B, H, T, hd) = slots, q.shape
        at = torch.where(rows, idx - q_start, T)  # (B, G); row T is scratch for the other slots
        index = at[:, None, :, None].expand(-1, H, -1, hd)
        qg = q.gather(2, index.clamp(max=T - 1))  # (B, H, G, hd)
        allowed = valid[:, None, None, :]  # (B, 1, 1, S)
        if self.causal:
            allowed = allowed & (kpos[None, None, None, :] <= idx[:, None, :, None])  # (B, 1, G, S)
        p = masked_softmax(qg @ k.transpose(-1, -2) / math.sqrt(hd), allowed)  # (B, H, G, S)
        if self.dropout_p > 0:
            p = torch.nn.functional.dropout(p, self.dropout_p)
        out = torch.cat([y, y.new_zeros(B, H, 1, hd)], 2).scatter(2, index, p @ v)
        return out[:, :, :T]
