"""Attention masks for ``scaled_dot_product_attention`` (boolean, True = may attend)."""

from __future__ import annotations

import torch


def sdpa_mask(
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    key_mask: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """Return ``(mask, is_causal)`` for SDPA, taking the fast paths when no explicit mask is needed.

    Queries are the last ``q_len`` of ``k_len`` positions (a KV cache holds the first ones).
    ``key_mask`` is (B, k_len) bool, True = real token. Rows that would see no key (a left-padding
    query under a causal mask) are opened to every key so softmax stays finite; their outputs are
    never read.
    """
    if key_mask is None:
        if not causal or q_len == 1:
            return None, False
        if q_len == k_len:
            return None, True
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed.tril(k_len - q_len)
    mask = allowed[None, None]  # (1, 1, Tq, Tk)
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :].to(torch.bool)  # (B, 1, Tq, Tk)
    empty = ~mask.any(dim=-1, keepdim=True)
    return mask | empty, False


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens (left padding gets position 0)."""
    return (mask.long().cumsum(-1) - 1).clamp_(min=0)
