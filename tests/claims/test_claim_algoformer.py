"""The ``algoformer`` claim check: declaration, the written criterion, the window-max task, the arms
(parameter counts, reach, control) and the wiring at tiny size. The real measurement is
``formerlab claims run algoformer``."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.claims import Inconclusive, algoformer, get_check
from formerlab.errors import ClaimError


def test_registered_with_complete_declaration():
    check = get_check("algoformer")
    assert isinstance(check, algoformer.AlgoFormerClaim)
    check.check_declaration()
    assert check.arxiv == "2402.13572" and check.year == 2024 and check.missing
    assert ">= 0" in check.criterion and "loops=1" in check.criterion
    assert len(check.seeds_for("full")) == 3
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))


@pytest.mark.parametrize(
    ("value", "expected"), [(0.0, True), (0.01, True), (12.0, True), (-0.01, False), (-9.0, False)]
)
def test_passes_is_the_written_criterion(value, expected):
    assert get_check("algoformer").passes(value) is expected
    assert get_check("algoformer").passes(math.nan) is False


def test_window_max_matches_a_direct_loop():
    values = torch.randint(0, 8, (3, 17), generator=torch.Generator().manual_seed(1))
    for reach in (0, 1, 5):
        out = algoformer.window_max(values, reach)
        for b in range(3):
            for i in range(17):
                lo, hi = max(0, i - reach), min(17, i + reach + 1)
                assert out[b, i] == values[b, lo:hi].max()


def test_task_batches_are_reproducible_and_labelled():
    task = algoformer.WindowMaxTask(seed=3)
    a, b = task.batch("train", 7, 16), task.batch("train", 7, 16)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["input_ids"], task.batch("train", 8, 16)["input_ids"])
    assert not torch.equal(a["input_ids"], task.batch("val", 7, 16)["input_ids"])
    assert a["input_ids"].shape == (16, algoformer.SEQ_LEN)
    assert torch.equal(a["labels"], algoformer.window_max(a["input_ids"]))
    assert int(a["input_ids"].min()) >= 0 and int(a["input_ids"].max()) < algoformer.SYMBOLS


class _Oracle(torch.nn.Module):
    """Answers the max within ``reach`` exactly (as one-hot logits)."""

    def __init__(self, reach: int) -> None:
        super().__init__()
        self.reach = reach

    def forward(self, ids):
        answer = algoformer.window_max(ids, self.reach)
        return torch.nn.functional.one_hot(answer, algoformer.SYMBOLS).float()


def test_evaluate_scores_reach_and_far_cells(monkeypatch):
    monkeypatch.setattr(algoformer, "VAL_SEQUENCES", 64)
    task = algoformer.WindowMaxTask(seed=0)
    full = task.evaluate(_Oracle(algoformer.REACH))
    assert full["accuracy"] == 1.0 and full["far_accuracy"] == 1.0
    short = task.evaluate(_Oracle(algoformer.REACH - 1))  # one propagation step short
    assert short["far_accuracy"] == 0.0 and 0.5 < short["accuracy"] < 1.0
    assert 0.2 < full["majority"] < 0.8


def test_arms_parameters_and_reach():
    models = {arm: algoformer.build_arm(arm, 0) for arm in algoformer.ARMS}
    params = {arm: algoformer.count_params(m) for arm, m in models.items()}
    assert params["algoformer"] == params["control"] < params["standard"]
    assert params["vanilla"] < params["algoformer"]
    calls = {arm: m.config.calls(m.config.loops) for arm, m in models.items() if arm != "standard"}
    reach = algoformer.REACH // algoformer.WINDOW  # block calls the answer needs
    assert calls["algoformer"] >= reach > models["standard"].config.depth
    assert calls["control"] < reach
    claim, control = models["algoformer"].config.to_dict(), models["control"].config.to_dict()
    assert {k for k in claim if claim[k] != control[k]} == {"loops"} and control["loops"] == 1
    # seed-matched: the control starts from exactly the AlgoFormer's weights
    for p, q in zip(models["algoformer"].parameters(), models["control"].parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("variant", "budget"), [("broken", "quick"), ("claim", "huge")])
def test_measure_rejects_bad_arguments_before_compute(variant, budget):
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("algoformer").measure(variant, budget, 0)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(algoformer, "STEPS", {"quick": 3, "full": 3})
    monkeypatch.setattr(algoformer, "VAL_SEQUENCES", 8)
    built = []
    real = algoformer.build_arm
    monkeypatch.setattr(
        algoformer, "build_arm", lambda arm, seed: built.append(arm) or real(arm, seed)
    )
    return built


def test_claim_and_control_plumbing_at_tiny_size(tiny):
    check = get_check("algoformer")
    try:
        value = check.measure("claim", "quick", 0)
    except Inconclusive as exc:  # 3 steps cannot learn the task
        value = exc.value
    details = dict(check.details)
    expected = 100 * (details["algoformer"]["accuracy"] - details["standard"]["accuracy"])
    assert value == pytest.approx(expected)
    assert set(details["params"]) == {"algoformer", "standard", "vanilla"}
    assert details["steps"] == 3 and tiny == ["algoformer", "standard", "vanilla"]
    control = check.measure("control", "quick", 0)
    assert tiny[3:] == ["control"]  # the standard model is trained once per seed
    assert check.details["params"]["control"] == details["params"]["algoformer"]
    assert control == pytest.approx(
        100 * (check.details["control"]["accuracy"] - details["standard"]["accuracy"])
    )


def fake_arms(monkeypatch, accuracy: dict[str, float], params: dict[str, int]):
    def train_arm(self, arm, budget, seed):
        return {"accuracy": accuracy[arm], "majority": 0.45, "far_accuracy": 0.0}, params[arm]

    monkeypatch.setattr(algoformer.AlgoFormerClaim, "_train_arm", train_arm)


def test_unlearned_claim_is_inconclusive_not_a_pass(monkeypatch):
    fake_arms(
        monkeypatch,
        {"algoformer": 0.5, "standard": 0.46, "vanilla": 0.4},
        {"algoformer": 3, "standard": 4, "vanilla": 1},
    )
    with pytest.raises(Inconclusive) as info:
        get_check("algoformer").measure("claim", "quick", 0)
    assert info.value.value == pytest.approx(4.0)


def test_looped_arm_must_have_fewer_parameters(monkeypatch):
    fake_arms(
        monkeypatch,
        {"algoformer": 0.9, "standard": 0.8, "vanilla": 0.7},
        {"algoformer": 4, "standard": 4, "vanilla": 1},
    )
    with pytest.raises(ClaimError, match="not fewer"):
        get_check("algoformer").measure("claim", "quick", 0)
