"""Shared test settings: small thread count, deterministic seeds, CI-style plain output."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CI", "true")  # plain log lines instead of progress bars in subprocesses too
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny matrices: threads only add spin-waiting)."""
    from formerlab.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _dataset_cache(tmp_path_factory) -> None:
    """Generated datasets (listops, pathfinder, ...) are cached in a temporary folder, never ~/.cache."""
    os.environ["FORMERLAB_CACHE"] = str(tmp_path_factory.mktemp("formerlab-cache"))
