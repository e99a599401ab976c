"""The ``lipschitz`` claim check: declaration, criterion direction, the control's construction and
the wiring, at tiny size (the claim itself is ``formerlab claims run lipschitz``)."""

from __future__ import annotations

import pytest

from formerlab.claims import Inconclusive, get_check, lipschitz
from formerlab.errors import ClaimError
from formerlab.lipschitz_bound import lipschitz_bound
from formerlab.registry import list_registered

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: 1 thread is fastest


def _arm(accuracy: float, val: float | None = None, **over) -> dict:
    arm = {
        "val_accuracy": accuracy if val is None else val,
        "test_accuracy": accuracy,
        "max_sigma_over_cap": 1.0,
        "finite": True,
        "final_loss": 0.1,
        "bound": 4.0,
        "max_pair_ratio": 2.0,
    }
    return {**arm, **over}


def _fake_arms(monkeypatch, arms: dict) -> list[tuple]:
    """``arms[kind]``: one run for every rate, or ``{lr: run}``."""
    calls = []

    def fake(optimizer, steps, seed, *, project):
        kind, lr = optimizer["kind"], optimizer["lr"]
        calls.append((kind, lr, steps, seed, project))
        runs = arms[kind]
        return runs.get(lr, runs)

    monkeypatch.setattr(lipschitz, "train_arm", fake)
    return calls


def test_registered_with_complete_declaration() -> None:
    assert "lipschitz" in list_registered("claim")
    check = get_check("lipschitz")
    check.check_declaration()
    assert check.arxiv == "2507.13338" and check.year == 2025
    assert len(check.seeds_for("quick")) >= 1 and len(check.seeds_for("full")) == 3
    assert check.missing  # partial: no transformer proxy


def test_criterion_direction() -> None:
    check = get_check("lipschitz")
    assert check.passes(lipschitz.MIN_GAIN) and check.passes(5.0)
    assert not check.passes(lipschitz.MIN_GAIN - 1e-9) and not check.passes(lipschitz.VIOLATION)


def test_value_is_the_gain_when_certified_and_a_violation_otherwise(monkeypatch) -> None:
    check = get_check("lipschitz")
    calls = _fake_arms(monkeypatch, {"muon": _arm(93.0), "adamw": _arm(90.5)})
    assert check.measure("claim", "quick", 7) == pytest.approx(2.5)
    steps = lipschitz.STEPS["quick"]
    assert calls == [
        (kind, lr, steps, 7, True) for kind, grid in lipschitz.LR_GRID.items() for lr in grid
    ]
    assert check.details["certified"] is True and check.details["muon_test_accuracy"] == 93.0
    for broken in (
        {"max_sigma_over_cap": 1.0 + 2 * lipschitz.CAP_SLACK},
        {"finite": False},
        {"max_pair_ratio": 4.5},
    ):
        _fake_arms(monkeypatch, {"muon": _arm(93.0), "adamw": _arm(90.0, **broken)})
        assert check.measure("claim", "quick", 0) == lipschitz.VIOLATION
    # one violating run anywhere in a grid is a violation, even at a rate that is not selected
    adamw = {lr: _arm(90.0) for lr in lipschitz.LR_GRID["adamw"]}
    adamw[lipschitz.LR_GRID["adamw"][0]] = _arm(10.0, finite=False)
    _fake_arms(monkeypatch, {"muon": _arm(93.0), "adamw": adamw})
    assert check.measure("claim", "quick", 0) == lipschitz.VIOLATION


def test_each_optimizer_is_scored_on_test_at_its_best_validation_rate(monkeypatch) -> None:
    check = get_check("lipschitz")
    muon = {lr: _arm(80.0, val=80.0) for lr in lipschitz.LR_GRID["muon"]}
    muon[0.01] = _arm(91.0, val=95.0)  # best on validation; its test score counts
    adamw = {lr: _arm(70.0, val=70.0) for lr in lipschitz.LR_GRID["adamw"]}
    adamw[1e-4] = _arm(88.0, val=90.0)
    adamw[3e-3] = _arm(99.0, val=60.0)  # best on test, but not selected
    _fake_arms(monkeypatch, {"muon": muon, "adamw": adamw})
    assert check.measure("claim", "quick", 0) == pytest.approx(91.0 - 88.0)
    assert check.details["muon_best_lr"] == 0.01 and check.details["adamw_best_lr"] == 1e-4


def test_control_skips_the_projection(monkeypatch) -> None:
    check = get_check("lipschitz")
    calls = _fake_arms(monkeypatch, {"muon": _arm(93.0), "adamw": _arm(90.0)})
    check.measure("control", "full", 1)
    steps = lipschitz.STEPS["full"]
    assert calls == [(k, lr, steps, 1, False) for k, lr in lipschitz.CONTROL_LR.items()]


def test_ceiling_is_inconclusive_not_a_fail(monkeypatch) -> None:
    check = get_check("lipschitz")
    _fake_arms(monkeypatch, {"muon": _arm(99.5), "adamw": _arm(99.3)})
    with pytest.raises(Inconclusive, match="ceiling"):
        check.measure("claim", "quick", 0)
    _fake_arms(monkeypatch, {"muon": _arm(90.0), "adamw": _arm(95.0)})
    assert check.measure("claim", "quick", 0) == pytest.approx(-5.0)  # a plain fail


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("lipschitz").measure("broken", "quick", 0)
    with pytest.raises(ClaimError, match="budgets"):
        get_check("lipschitz").measure("claim", "huge", 0)


def test_projection_keeps_the_cap_and_skipping_it_breaks_the_cap(monkeypatch) -> None:
    """The real training loop, a few steps at a large learning rate: with the projection every
    matrix stays within the cap after every step; without it the cap is exceeded."""
    monkeypatch.setattr(lipschitz, "PAIRS", 1000)
    opt = {"kind": "adamw", "lr": 0.05, "weight_decay": 0.0}
    kept = lipschitz.train_arm(opt, 8, 0, project=True)
    skipped = lipschitz.train_arm(opt, 8, 0, project=False)
    assert kept["max_sigma_over_cap"] <= 1.0 + 1e-6 and lipschitz.certified(kept)
    assert skipped["max_sigma_over_cap"] > 1.0 + lipschitz.CAP_SLACK
    assert not lipschitz.certified(skipped)
    for arm in (kept, skipped):
        assert arm["max_pair_ratio"] <= arm["bound"] and 0 <= arm["test_accuracy"] <= 100


def test_the_model_is_norm_free_and_fully_capped() -> None:
    model = lipschitz.residual_mlp(0)
    capped = [m for m in model.modules() if isinstance(m, lipschitz.LipschitzLinear)]
    assert len(capped) == 2 + 2 * lipschitz.DEPTH
    assert not any("Norm" in type(m).__name__ for m in model.modules())
    assert lipschitz_bound(model) <= lipschitz.enforced_bound() * (1 + 1e-6)


def test_digits_split_is_fixed_and_disjoint() -> None:
    data = lipschitz.digits_split()
    (xt, _), (xv, yv), (xs, _) = data["train"], data["val"], data["test"]
    assert len(xv) == lipschitz.VAL_SIZE and len(xs) == lipschitz.TEST_SIZE
    assert len(xt) + len(xv) + len(xs) == 1797
    assert xt.shape[1] == 64 and float(xt.max()) <= 1.0 and set(yv.tolist()) <= set(range(10))
