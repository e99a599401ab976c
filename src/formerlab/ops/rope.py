"""Rotary position embedding (Su et al., 2021, arXiv:2104.09864) as pure functions."""

from __future__ import annotations

import torch


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Inverse frequencies, one per rotated pair: (head_dim // 2,)."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def rope_cos_sin(
    position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for positions (B, T) or (T,): shape (B or 1, 1, T, head_dim // 2)."""
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    angles = position_ids[:, None, :, None].to(inv_freq.dtype) * inv_freq  # (B, 1, T, hd/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, hd) by position; pairs are the two halves of the head (GPT-NeoX layout)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
