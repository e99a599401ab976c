"""Shared test settings: small thread count, deterministic seeds, CI-style plain output."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CI", "true")  # plain log lines instead of progress bars in subprocesses too
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
