"""The ``fit`` claim check: declaration, written criterion, cost gate, control and wiring (tiny runs;
the claim itself is ``formerlab claims run fit``)."""

from __future__ import annotations

import math

import pytest

from formerlab.claims import Inconclusive, fit, get_check
from formerlab.errors import ClaimError
from formerlab.registry import list_registered


def test_registered_with_complete_declaration() -> None:
    assert "fit" in list_registered("claim")
    check = get_check("fit")
    check.check_declaration()
    assert check.arxiv == "2305.12689" and check.year == 2023
    assert "local-only" in check.criterion and "0.5" in check.criterion
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))
    assert check.missing


@pytest.mark.parametrize(
    ("value", "expected"), [(0.0, True), (3.5, True), (-0.01, False), (-100.0, False)]
)
def test_passes_is_the_written_criterion(value: float, expected: bool) -> None:
    assert get_check("fit").passes(value) is expected
    assert get_check("fit").passes(math.nan) is False


@pytest.mark.parametrize(
    ("arm", "full", "cost_ok", "expected"),
    [
        (96.0, 99.0, True, 2.0),  # bar = full - 5 = 94
        (91.0, 92.0, True, 1.0),  # bar = 90 (full - 5 = 87 is lower)
        (52.0, 99.0, True, -42.0),
        (99.0, 99.0, False, -100.0),  # too expensive: fails whatever the accuracy
    ],
)
def test_margin_against_full_attention_and_the_cost_gate(arm, full, cost_ok, expected) -> None:
    assert fit.margin(arm, full, cost_ok) == pytest.approx(expected)


def test_arms_differ_only_in_the_path_across_groups() -> None:
    runs = {arm: fit.arm_run(arm, 400, 1) for arm in ("full", "fit", "local")}
    assert runs["full"].model.kind == "encoder"
    assert (runs["fit"].model.global_layers, runs["local"].model.global_layers) == (1, 0)
    fit_cfg, local_cfg = runs["fit"].model.to_dict(), runs["local"].model.to_dict()
    assert {k for k in fit_cfg if fit_cfg[k] != local_cfg[k]} == {"global_layers"}
    for run in runs.values():
        assert (run.train.steps, run.train.seed, run.model.dim) == (400, 1, 32)


def test_cost_facts_are_exact() -> None:
    run = fit.arm_run("fit", 400, 0)
    # L=64, n=16 (4 groups), m=2, 2 blocks vs 2 full layers: (4*256 + 8^2 + 2*4*2*16) / 64^2
    assert fit.flops_ratio(run) == pytest.approx((4 * 256 + 64 + 256) / 4096, abs=1e-15)
    assert fit.flops_ratio(fit.arm_run("full", 400, 0)) == 1.0
    assert fit.SLOPE_RANGE[0] <= fit.cube_root_slope(run.model) <= fit.SLOPE_RANGE[1]


@pytest.mark.parametrize(("variant", "budget"), [("broken", "quick"), ("claim", "huge")])
def test_measure_rejects_bad_arguments_before_compute(variant: str, budget: str) -> None:
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("fit").measure(variant, budget, 0)


def _scripted(monkeypatch, accuracies: dict[str, tuple[float, float]]):
    trained = []

    def fake(run):
        arm = (
            "full"
            if run.model.kind == "encoder"
            else ("fit" if run.model.global_layers else "local")
        )
        trained.append(arm)
        return accuracies[arm]

    monkeypatch.setattr(fit, "train_arm", fake)
    return trained


def test_claim_and_control_share_the_trained_arms(monkeypatch) -> None:
    trained = _scripted(
        monkeypatch, {"full": (99.0, 98.0), "fit": (97.0, 96.0), "local": (51.0, 50.0)}
    )
    check = get_check("fit")
    assert check.measure("claim", "quick", 0) == pytest.approx(3.0)
    assert check.details["flops_ratio"] < fit.MAX_FLOPS_RATIO
    control = check.measure("control", "quick", 0)
    assert control == pytest.approx(51.0 - 94.0) and not check.passes(control)
    assert check.details["arm"] == "local"
    assert sorted(trained) == ["fit", "full", "local"]


@pytest.mark.parametrize(
    ("accuracies", "reason"),
    [
        ({"full": (99.0, 99.0), "fit": (80.0, 79.5), "local": (70.0, 70.0)}, "task leaks"),
        ({"full": (99.0, 99.0), "fit": (99.0, 99.0), "local": (62.0, 50.0)}, "task leaks"),
        ({"full": (70.0, 60.0), "fit": (60.0, 60.0), "local": (50.0, 50.0)}, "did not learn"),
        ({"full": (99.0, 99.0), "fit": (80.0, 60.0), "local": (50.0, 50.0)}, "still learning"),
    ],
)
def test_undecidable_claim_runs_are_inconclusive(monkeypatch, accuracies, reason) -> None:
    _scripted(monkeypatch, accuracies)
    with pytest.raises(Inconclusive, match=reason):
        get_check("fit").measure("claim", "quick", 0)


def test_a_flat_failing_claim_run_is_a_failure(monkeypatch) -> None:
    _scripted(monkeypatch, {"full": (99.0, 99.0), "fit": (50.0, 50.0), "local": (50.0, 50.0)})
    assert get_check("fit").measure("claim", "quick", 0) == pytest.approx(-44.0)


def test_train_arm_runs_and_scores_a_tiny_run(monkeypatch) -> None:
    monkeypatch.setitem(fit.SETUP, "task", {**fit.SETUP["task"], "eval_batches": 1})
    monkeypatch.setattr(fit, "EVAL_BATCH", 8)
    final, late = fit.train_arm(fit.arm_run("fit", 4, 0))
    assert 0.0 <= final <= 100.0 and 0.0 <= late <= 100.0
    assert final * 8 / 100 == pytest.approx(round(final * 8 / 100))
