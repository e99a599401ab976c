"""Every registered claim check declares a complete, well-formed contract (DESIGN §6)."""

from __future__ import annotations

import pytest

from formerlab.claims import BUDGETS, get_check
from formerlab.registry import list_registered


@pytest.mark.parametrize("key", list_registered("claim"))
def test_declaration_complete(key):
    check = get_check(key)  # raises ClaimError naming a missing or mistyped attribute
    for budget in BUDGETS:
        assert check.seeds_for(budget), budget
    # full may gate on seeds the quick budget (or a calibration) never saw, but not on fewer
    assert len(check.seeds["full"]) >= len(check.seeds["quick"]), "full has >= quick seeds"
    assert check.describe()["title"] == check.paper
