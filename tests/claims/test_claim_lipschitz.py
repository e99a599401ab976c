"""The ``lipschitz`` claim check: declaration, criterion direction, the control's construction and
the wiring of both proxies (the MLP (a) and the transformer LM (b)), at tiny size (the claim itself
is ``formerlab claims run lipschitz``)."""

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


def _lm_arm(accuracy: float, val: float | None = None, **over) -> dict:
    arm = {
        **_arm(accuracy, val),
        "val_loss_bits": 3.5,
        "unigram_bits": 4.7,
        "bound_token_max": 3.0,
        "max_pair_ratio_token_max": 1.5,
    }
    return {**arm, **over}


def _faker(arms: dict, calls: list):
    def fake(optimizer, steps, seed, *, project):
        kind, lr = optimizer["kind"], optimizer["lr"]
        calls.append((kind, lr, steps, seed, project))
        runs = arms[kind]
        return runs.get(lr, runs)

    return fake


def _fake_arms(monkeypatch, arms: dict, lm_arms: dict | None = None) -> list[tuple]:
    """``arms[kind]``: one run of proxy (a) for every rate, or ``{lr: run}``; ``lm_arms`` likewise
    for proxy (b) (default: a certified 10-point gain, so (a) decides)."""
    calls: list[tuple] = []
    lm_arms = lm_arms or {"muon": _lm_arm(50.0), "adamw": _lm_arm(40.0)}
    monkeypatch.setattr(lipschitz, "train_arm", _faker(arms, calls))
    monkeypatch.setattr(lipschitz, "train_lm_arm", _faker(lm_arms, []))
    return calls


def _fake_lm(monkeypatch, lm_arms: dict) -> list[tuple]:
    """Proxy (a) certified at a 10-point gain; proxy (b) as given."""
    calls: list[tuple] = []
    monkeypatch.setattr(
        lipschitz, "train_arm", _faker({"muon": _arm(95.0), "adamw": _arm(85.0)}, [])
    )
    monkeypatch.setattr(lipschitz, "train_lm_arm", _faker(lm_arms, calls))
    return calls


def test_registered_with_complete_declaration() -> None:
    assert "lipschitz" in list_registered("claim")
    check = get_check("lipschitz")
    check.check_declaration()
    assert check.arxiv == "2507.13338" and check.year == 2025
    assert len(check.seeds_for("quick")) >= 1 and len(check.seeds_for("full")) == 3
    assert check.missing  # partial: no soft cap / hammer / weight-decay arms
    assert "transformer" not in check.missing


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
    # (b) failing too: a plain fail, not inconclusive
    lm = {"muon": _lm_arm(40.0), "adamw": _lm_arm(40.5)}
    _fake_arms(monkeypatch, {"muon": _arm(99.5), "adamw": _arm(99.3)}, lm)
    assert check.measure("claim", "quick", 0) == pytest.approx(-0.5)


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


# -- proxy (b) -----------------------------------------------------------------------------------


def test_value_is_the_minimum_of_the_two_margins(monkeypatch) -> None:
    check = get_check("lipschitz")
    calls = _fake_lm(monkeypatch, {"muon": _lm_arm(41.5), "adamw": _lm_arm(40.0)})
    assert check.measure("claim", "quick", 3) == pytest.approx(1.5)  # (a) has +10
    steps = lipschitz.LM_STEPS["quick"]
    assert calls == [
        (kind, lr, steps, 3, True) for kind, grid in lipschitz.LM_LR_GRID.items() for lr in grid
    ]
    assert check.details["lm_margin"] == pytest.approx(1.5) and check.details["mlp_margin"] == 10
    assert check.details["lm_muon_test_accuracy"] == 41.5


def test_lm_is_selected_on_validation_and_scored_on_other_windows(monkeypatch) -> None:
    check = get_check("lipschitz")
    muon = {lr: _lm_arm(30.0, val=30.0) for lr in lipschitz.LM_LR_GRID["muon"]}
    muon[0.05] = _lm_arm(38.0, val=39.0)
    adamw = {lr: _lm_arm(20.0, val=20.0) for lr in lipschitz.LM_LR_GRID["adamw"]}
    adamw[1e-2] = _lm_arm(36.0, val=37.0)
    adamw[1e-1] = _lm_arm(45.0, val=10.0)  # best score, but not selected
    _fake_lm(monkeypatch, {"muon": muon, "adamw": adamw})
    assert check.measure("claim", "quick", 0) == pytest.approx(2.0)
    assert check.details["lm_muon_best_lr"] == 0.05 and check.details["lm_adamw_best_lr"] == 1e-2


@pytest.mark.parametrize(
    "broken",
    [
        {"max_sigma_over_cap": 1.0 + 2 * lipschitz.CAP_SLACK},
        {"finite": False},
        {"max_pair_ratio": 4.5},  # above the Euclidean bound (4.0)
        {"max_pair_ratio_token_max": 3.5},  # above the max-over-tokens bound (3.0)
        {"val_loss_bits": 4.8},  # diverged: above the unigram entropy (4.7)
        {"val_loss_bits": float("nan")},
    ],
)
def test_lm_violations_and_divergence_score_minus_100(monkeypatch, broken) -> None:
    check = get_check("lipschitz")
    _fake_lm(monkeypatch, {"muon": _lm_arm(50.0), "adamw": _lm_arm(40.0, **broken)})
    assert check.measure("claim", "quick", 0) == lipschitz.VIOLATION
    assert not check.passes(check.measure("claim", "quick", 0))


def test_divergence_counts_only_for_the_selected_rate(monkeypatch) -> None:
    check = get_check("lipschitz")
    adamw = {lr: _lm_arm(40.0, val=40.0) for lr in lipschitz.LM_LR_GRID["adamw"]}
    adamw[1e-1] = _lm_arm(10.0, val=10.0, val_loss_bits=9.0)  # a bad rate, not selected
    _fake_lm(monkeypatch, {"muon": _lm_arm(45.0), "adamw": adamw})
    assert check.measure("claim", "quick", 0) == pytest.approx(5.0)


def test_lm_control_skips_the_projection(monkeypatch) -> None:
    check = get_check("lipschitz")
    calls = _fake_lm(monkeypatch, {"muon": _lm_arm(50.0), "adamw": _lm_arm(40.0)})
    check.measure("control", "full", 2)
    steps = lipschitz.LM_STEPS["full"]
    assert calls == [(k, lr, steps, 2, False) for k, lr in lipschitz.LM_CONTROL_LR.items()]


def test_lm_model_is_norm_free_bounded_and_fully_capped() -> None:
    run = lipschitz.lm_run(lipschitz.optimizer_config("muon", 0.02), 5, 0)
    assert run.model.norm.kind == "none" and run.model.attention.kind == "lipschitz"
    model = lipschitz.build_model(run.model)
    capped = [m for m in model.modules() if isinstance(m, lipschitz.LipschitzLinear)]
    assert len(capped) == 6 * run.model.depth  # q, k, v, out, fc1, fc2 per block
    norms = [m.config.kind for m in model.modules() if getattr(m, "config", None) is not None
             and getattr(m.config, "group", "") == "norm"]  # fmt: skip
    assert norms and set(norms) == {"none"}
    assert lipschitz.max_sigma_ratio(model) <= 1.0
    for part in model.modules():  # every matrix onto the cap's surface: the worst case
        if isinstance(part, lipschitz.LipschitzLinear):
            part.init_normal_(5.0)
    for norm in ("euclidean", "token_max"):
        assert lipschitz_bound(model, norm=norm) <= lipschitz.lm_enforced_bound(norm) * (1 + 1e-6)


def test_lm_projection_keeps_the_cap_and_skipping_it_breaks_the_cap(monkeypatch) -> None:
    """The real LM loop, a few steps at a large rate: certified with the projection (bounds hold on
    sampled pairs in both norms); without it the cap is exceeded."""
    monkeypatch.setattr(lipschitz, "LM_PAIRS", 200)
    monkeypatch.setattr(lipschitz, "LM_EVAL_BATCHES", 1)
    opt = {"kind": "adamw", "lr": 0.05, "weight_decay": 0.0}
    kept = lipschitz.train_lm_arm(opt, 4, 0, project=True)
    skipped = lipschitz.train_lm_arm(opt, 4, 0, project=False)
    assert kept["max_sigma_over_cap"] <= 1.0 + 1e-6 and lipschitz.lm_certified(kept)
    assert skipped["max_sigma_over_cap"] > 1.0 + lipschitz.CAP_SLACK
    assert not lipschitz.lm_certified(skipped)
    for arm in (kept, skipped):
        assert arm["max_pair_ratio"] <= arm["bound"]
        assert arm["max_pair_ratio_token_max"] <= arm["bound_token_max"] < arm["bound"]
        assert 0 <= arm["test_accuracy"] <= 100 and arm["unigram_bits"] > 4
