"""The ``wide_attention`` claim check: declaration, written criterion, arms, margins and wiring.

The wiring runs at tiny size on a fixture fortunes tree (two topics, a few steps); it is not the
claim (that is ``formerlab claims run wide_attention``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from formerlab.claims import get_check, wide_attention
from formerlab.errors import ClaimError
from formerlab.registry import list_registered


def test_registered_with_complete_declaration():
    assert "wide_attention" in list_registered("claim")
    check = get_check("wide_attention")
    assert check.arxiv == "2210.00640"
    assert "0.6" in check.criterion and "1 points" in check.criterion
    assert len(check.seeds_for("full")) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, True), (3.0, True), (-1e-9, False), (-5.0, False), (math.nan, False)],
)
def test_passes_is_the_written_criterion(value, expected):
    assert get_check("wide_attention").passes(value) is expected


def test_margins_are_non_negative_exactly_when_each_condition_holds():
    ok = wide_attention.margins((50.0, 51.0), (0.6, 1.0), (99, 100))
    assert ok["accuracy"] == pytest.approx(0.0) and ok["latency"] == pytest.approx(0.0)
    assert ok["parameters"] == pytest.approx(1.0)
    bad = wide_attention.margins((49.9, 51.0), (0.61, 1.0), (100, 100))
    assert bad["accuracy"] < 0 and bad["latency"] < 0 and bad["parameters"] == 0.0


def test_arms_hold_the_total_number_of_heads_and_the_control_is_not_widened():
    heads = {}
    for arm in wide_attention.ARMS:
        model = wide_attention.arm_run(arm, 100, 0).model
        heads[arm] = (model.depth, model.num_heads, model.head_dim, model.head.num_classes)
    assert heads["deep"] == (4, 4, 16, 24)
    assert heads["wide"] == (1, 16, 16, 24)
    assert heads["narrow"] == (1, 4, 16, 24)


def test_paired_latency_times_both_models():
    class Net(torch.nn.Module):
        def __init__(self, depth: int):
            super().__init__()
            self.layers = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(depth)])
            self.calls = 0

        def forward(self, x, mask):
            assert mask is None
            self.calls += 1
            return self.layers(x)

    slow, fast = Net(8), Net(1)
    fast.train()
    a, b = wide_attention.paired_latency(fast, slow, {"input_ids": torch.randn(32, 64)}, runs=5)
    assert a > 0 and b > 0
    assert fast.calls == slow.calls == 3 + 5  # warm-up, then the timed runs
    assert not fast.training  # timed in eval mode


def test_bad_variant_or_budget_is_rejected_before_compute():
    check = get_check("wide_attention")
    with pytest.raises(ClaimError, match="allowed variants"):
        check.measure("both", "quick", 0)
    with pytest.raises(ClaimError, match="budgets"):
        check.measure("claim", "huge", 0)


@pytest.fixture
def tiny_setup(monkeypatch, tmp_path: Path):
    """Two fixture topics, 40 training texts, 3 steps, small latency loop."""
    for package, topic, word in (
        ("fortunes", "alpha", "apples"),
        ("fortunes-min", "beta", "bricks"),
    ):
        (tmp_path / "fortunes" / package).mkdir(parents=True)
        texts = [f"{word} {i} {word}" for i in range(40)]
        (tmp_path / "fortunes" / package / topic).write_text("\n%\n".join(texts) + "\n%\n")
    task = {
        **wide_attention.TASK_CONFIG,
        "root": str(tmp_path / "fortunes"),
        "min_examples_per_class": 1,
        "seq_len": 32,
        "train_size": 40,
        "val_size": 20,
        "test_size": 20,
        "eval_batches": 2,
    }
    monkeypatch.setattr(wide_attention, "TASK_CONFIG", task)
    monkeypatch.setattr(wide_attention, "NUM_TOPICS", 2)
    monkeypatch.setattr(wide_attention, "STEPS", {"quick": 3, "full": 3})
    monkeypatch.setattr(wide_attention, "LATENCY_RUNS", 2)
    monkeypatch.setattr(wide_attention, "LATENCY_BATCH", 4)
    train = {**wide_attention.TRAIN_CONFIG, "batch_size": 4, "schedule": {"kind": "constant"}}
    monkeypatch.setattr(wide_attention, "TRAIN_CONFIG", train)


def test_measure_trains_the_deep_model_once_and_notes_every_arm(tiny_setup):
    check = get_check("wide_attention")
    value = check.measure("claim", "quick", 0)
    claim = dict(check.details)
    check.details.clear()
    control = check.measure("control", "quick", 0)
    assert len(check._deep_models) == 1  # shared by the claim and its control
    assert claim["arm"] == "wide" and check.details["arm"] == "narrow"
    assert claim["deep_accuracy"] == check.details["deep_accuracy"]
    assert claim["parameters"] < claim["deep_parameters"]
    assert value == pytest.approx(min(claim["margins"].values()))
    assert control == pytest.approx(min(check.details["margins"].values()))
