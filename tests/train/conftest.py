"""Registers the trainer test tasks for the tests of this directory only.

``trainer_testkit`` sits beside the tests so subprocesses can run it as a script; this directory is
put on ``sys.path`` so the test modules can import it too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trainer_testkit


@pytest.fixture(autouse=True, scope="module")
def _kit_tasks() -> Iterator[None]:
    trainer_testkit.register()
    yield
    trainer_testkit.unregister()
