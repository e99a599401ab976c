"""Shared fixtures for attention-kind tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from formerlab.layers.attention import AttentionConfig, build_attention
from formerlab.layers.linear import DenseConfig

DIM, HEADS = 16, 2


def _cross_twins(attn: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A cross-attention layer of ``attn`` and a softmax one with the same projections."""
    dims = dict(dim=DIM, num_heads=HEADS, causal=False, max_seq_len=16, linear=DenseConfig())
    ours = build_attention(AttentionConfig.from_dict(attn), cross=True, **dims).double().eval()
    softmax = build_attention(AttentionConfig.from_dict({"kind": "softmax"}), cross=True, **dims)
    softmax.double().eval().load_state_dict(ours.state_dict(), strict=False)
    return ours, softmax


def _cross_outputs(ours: torch.nn.Module, softmax: torch.nn.Module) -> list[torch.Tensor]:
    """Both layers on the same queries and a context with padding in its second row."""
    x = torch.randn(2, 4, DIM, dtype=torch.float64)
    context = torch.randn(2, 9, DIM, dtype=torch.float64)
    context_mask = torch.ones(2, 9, dtype=torch.bool)
    context_mask[1, 6:] = False
    with torch.no_grad():
        return [m(x, context=context, context_mask=context_mask) for m in (ours, softmax)]


@pytest.fixture
def cross_twins() -> Callable[[dict], tuple[torch.nn.Module, torch.nn.Module]]:
    return _cross_twins


@pytest.fixture
def cross_outputs() -> Callable[[torch.nn.Module, torch.nn.Module], list[torch.Tensor]]:
    return _cross_outputs
