"""The ``lra`` claim check: its registration, declaration, written criterion, control and wiring.

These tests check the wiring at tiny size; they are not the claim (that is ``formerlab claims run
lra``). The one real quick run is marked slow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from formerlab.claims import Inconclusive, get_check, lra, run_claim
from formerlab.errors import ClaimError
from formerlab.registry import TASK, list_registered
from formerlab.run_config import load_config

TINY_TASK = {
    **lra.LISTOPS_TINY["task"],
    "train_size": 96,
    "val_size": 40,
    "test_size": 8,
    "eval_batches": 5,  # 5 batches of 8 = the whole validation split
}
TINY_TRAIN = {
    **lra.LISTOPS_TINY["train"],
    "batch_size": 8,
    "schedule": {"kind": "cosine", "warmup_steps": 1},
}


@pytest.fixture
def tiny_task():
    run = load_config({**lra.LISTOPS_TINY, "task": TINY_TASK})
    return TASK.entry("listops").impl(run.task, seed=0)


class _Constant(torch.nn.Module):
    """Always answers class ``label``."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(input_ids.shape[0], 10)
        logits[:, self.label] = 1.0
        return logits


def test_registered_with_complete_declaration():
    assert "lra" in list_registered("claim")
    check = get_check("lra")
    assert isinstance(check, lra.LRAClaim)
    check.check_declaration()
    assert check.arxiv == "2011.04006" and check.year == 2021
    assert len(check.seeds_for("full")) == 3
    assert "local" in check.criterion and "local" in check.metric
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))
    assert "36.37" in check.paper_value and "15.82" in check.paper_value
    assert "15" in check.criterion and "shuffled" in check.criterion


@pytest.mark.parametrize(
    ("value", "expected"),
    [(15.0, True), (15.001, True), (40.0, True), (14.999, False), (0.0, False), (-3.0, False)],
)
def test_passes_is_the_written_criterion(value, expected):
    assert get_check("lra").passes(value) is expected
    assert lra.MIN_GAP == 15.0


def test_passes_rejects_nan():
    assert get_check("lra").passes(math.nan) is False


@pytest.mark.parametrize(("variant", "budget"), [("broken", "quick"), ("claim", "huge")])
def test_measure_rejects_bad_arguments_before_compute(variant, budget):
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("lra").measure(variant, budget, 0)


def test_setup_is_listops_tiny_with_softmax():
    run = lra.listops_run(150, 3)
    assert run.train.steps == 150 and run.train.seed == 3
    assert run.model.attention.kind == "softmax"
    assert (run.model.dim, run.model.depth, run.task.max_length) == (64, 2, 100)


def test_shuffled_labels_keep_counts_and_lose_the_pairing(tiny_task):
    before = tiny_task.splits["train"].labels.copy()
    val = tiny_task.splits["val"].labels.copy()
    lra.shuffle_train_labels(tiny_task, 0)
    after = tiny_task.splits["train"].labels
    assert np.array_equal(np.sort(after), np.sort(before))
    assert not np.array_equal(after, before)
    assert np.array_equal(tiny_task.splits["val"].labels, val)
    rows = tiny_task.batch("train", 0, 8)["labels"]
    assert set(rows.tolist()) <= set(after.tolist())


def test_shuffle_is_deterministic_per_seed(tiny_task):
    original = tiny_task.splits["train"]
    results = []
    for seed in (0, 0, 1):
        tiny_task.splits["train"] = original
        lra.shuffle_train_labels(tiny_task, seed)
        results.append(tiny_task.splits["train"].labels)
    assert np.array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])


def test_accuracy_gap_is_zero_for_the_majority_class(tiny_task):
    assert lra.accuracy_gap(tiny_task, _Constant(tiny_task.majority_class), 8) == pytest.approx(0.0)


def test_accuracy_gap_of_another_class(tiny_task):
    labels = tiny_task.splits["val"].labels
    other = (tiny_task.majority_class + 1) % 10
    expected = 100.0 * (np.mean(labels == other) - np.mean(labels == tiny_task.majority_class))
    assert lra.accuracy_gap(tiny_task, _Constant(other), 8) == pytest.approx(expected)


def test_train_model_updates_parameters(monkeypatch, tiny_task):
    monkeypatch.setitem(lra.LISTOPS_TINY, "train", TINY_TRAIN)
    run = lra.listops_run(3, 0)
    model = lra.seeded_model(run)
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    lra.train_model(run, tiny_task, model, seen.append)
    assert seen == [1, 2, 3]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _scripted(monkeypatch, gaps):
    """Tiny data, 4 steps, and accuracy_gap returning ``gaps`` in order: the full model's (late,
    final), then the local model's (late, final) when it is trained."""
    monkeypatch.setitem(lra.LISTOPS_TINY, "task", TINY_TASK)
    monkeypatch.setitem(lra.LISTOPS_TINY, "train", TINY_TRAIN)
    monkeypatch.setattr(lra, "STEPS", {"quick": 4, "full": 4})
    values = iter(gaps)
    monkeypatch.setattr(lra, "accuracy_gap", lambda *args: next(values))


def test_local_run_changes_only_the_attention():
    run = lra.listops_run(150, 1)
    local = lra.local_run(run)
    assert local.model.attention.kind == "local"
    assert local.model.attention.window == lra.LOCAL_WINDOW == 4
    assert local.model.replace(attention=run.model.attention) == run.model
    assert local.task == run.task and local.train == run.train


def test_claim_below_criterion_and_still_rising_is_inconclusive(monkeypatch):
    _scripted(monkeypatch, [2.0, 10.0, 0.0, 1.0])
    with pytest.raises(Inconclusive) as info:
        get_check("lra").measure("claim", "quick", 0)
    assert info.value.value == 9.0


@pytest.mark.parametrize(
    ("variant", "gaps", "expected"),
    [
        ("claim", [9.5, 10.0, 0.0, 1.0], 9.0),  # local above the majority class: subtract it
        ("claim", [5.0, 20.0, 0.0, -3.0], 20.0),  # local below the majority class: majority wins
        ("claim", [25.0, 25.0, 5.0, 12.0], 13.0),  # beats majority by 25 but local by only 13
        ("control", [2.0, 10.0, 1.0, 2.0], 8.0),
    ],
)
def test_measure_subtracts_the_better_of_majority_and_local(monkeypatch, variant, gaps, expected):
    _scripted(monkeypatch, gaps)
    check = get_check("lra")
    check.details = {}
    assert check.measure(variant, "quick", 0) == expected
    assert check.details["local_minus_majority"] == gaps[3]
    assert check.details["full_minus_majority"] == gaps[1]


def test_local_model_trained_once_per_budget_and_seed(monkeypatch):
    _scripted(monkeypatch, [20.0, 20.0, 0.0, 1.0, 3.0, 4.0])  # claim + local, then control only
    check = lra.LRAClaim(lra.LRAClaimConfig())
    assert check.measure("claim", "quick", 0) == 19.0
    assert check.measure("control", "quick", 0) == 3.0  # same local model: 4 - 1


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    result = run_claim("lra", "quick", tmp_path)
    assert (tmp_path / "lra.json").is_file()
    assert result["control_passed"] is False
    assert result["status"] in ("pass", "fail", "inconclusive")
    assert result["seeds"][0]["control"] < lra.MIN_GAP
