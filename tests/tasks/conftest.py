"""Task tests: each test gets its own empty dataset cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FORMERLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
