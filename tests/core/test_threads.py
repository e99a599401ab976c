"""``torch_threads``: one place sets the torch thread count for a block and restores it."""

from __future__ import annotations

import pytest
import torch

from formerlab.threads import torch_threads


def test_sets_then_restores_even_on_error() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_none_leaves_the_count_alone() -> None:
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
