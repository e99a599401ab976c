"""Attention with an explicit (B, nh, Tq, Tk) score matrix, for kinds that change the softmax itself.

SDPA fuses ``softmax(Q K^T / sqrt(d)) V`` and gives no way to touch the probabilities; kinds that
clip them (clipped softmax) or keep only the top-k scores (hard attention) materialise the scores
here instead. :func:`explicit_attention` with ``probs=softmax_probs`` is the plain reference of SDPA.
Masks follow :func:`formerlab.ops.masks.sdpa_mask`: queries are the last ``Tq`` of ``Tk`` positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from .masks import sdpa_mask

Probs = Callable[[torch.Tensor], torch.Tensor]


def allowed_keys(
    q_len: int, k_len: int, *, causal: bool, key_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean (1 or B, 1, Tq, Tk) mask, True = may attend; None when every key is allowed."""
    mask, is_causal = sdpa_mask(q_len, k_len, causal=causal, key_mask=key_mask, device=device)
    if is_causal:  # sdpa_mask's fast path leaves the causal mask implicit; spell it out
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        mask = mask[None, None]
    return mask


def repeat_kv(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, nkv, S, hd) -> (B, num_heads, S, hd): each key/value head serves a group of query heads."""
    groups = num_heads // x.size(1)
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def softmax_probs(scores: torch.Tensor) -> torch.Tensor:
    return scores.softmax(dim=-1)


def clipped_softmax(scores: torch.Tensor, *, zeta: float, gamma: float) -> torch.Tensor:
    """clip((zeta - gamma) * softmax(scores) + gamma, 0, 1) over the last dim (Bondarenko et al.)."""
    return ((zeta - gamma) * scores.softmax(dim=-1) + gamma).clamp(0.0, 1.0)


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Set every score below the k-th largest of its row to -inf (ties with the k-th are kept)."""
    if k >= scores.size(-1):
        return scores
    kth = scores.topk(k, dim=-1).values[..., -1:]  # (..., 1)
    return scores.masked_fill(scores < kth, float("-inf"))


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_mask: torch.Tensor | None,
    probs: Probs = softmax_probs,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``probs(Q K^T / sqrt(d) masked with -inf) V``: (B, nh, Tq, hd), (B, nkv, Tk, hd) -> (B, nh, Tq, hd).

    ``probs`` maps masked scores to weights over the last dim; disallowed keys enter it as -inf.
    """
    k, v = repeat_kv(k, q.size(1)), repeat_kv(v, q.size(1))
    scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, nh, Tq, Tk)
    mask = allowed_keys(q.size(2), k.size(2), causal=causal, key_mask=key_mask, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = probs(scores)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return weights @ v
