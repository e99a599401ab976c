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
    assert set(check.seeds["quick"]) <= set(check.seeds["full"]), "quick seeds ⊆ full seeds"
    assert check.describe()["title"] == check.paper
