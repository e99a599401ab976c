"""The ``wide_attention`` claim check: declaration, written criterion, both pre-registered tasks, arms,
margins and wiring.

The wiring runs at tiny size (a fixture fortunes tree with two topics, short ListOps expressions, a
few steps); it is not the claim (that is ``formerlab claims run wide_attention``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from formerlab.claims import Inconclusive, get_check, wide_attention
from formerlab.errors import ClaimError
from formerlab.registry import list_registered


def test_registered_with_complete_declaration():
    assert "wide_attention" in list_registered("claim")
    check = get_check("wide_attention")
    assert check.arxiv == "2210.00640"
    assert "0.6" in check.criterion and "1 points on each task" in check.criterion
    assert "mini-ListOps" in check.criterion and "fortunes topics" in check.criterion
    assert len(check.seeds_for("full")) == 3


def test_both_pre_registered_tasks_are_trained():
    assert wide_attention.TASKS == ("topics", "listops")
    assert wide_attention.TASK_CONFIG["kind"] == "text_classification"
    assert wide_attention.LISTOPS_CONFIG["kind"] == "listops"
    for task in wide_attention.TASKS:
        steps = wide_attention.task_setup(task)[2]
        assert set(steps) == {"quick", "full"} and steps["full"] > steps["quick"] > 0
    with pytest.raises(ClaimError, match="unknown task 'imdb'; allowed: topics, listops"):
        wide_attention.task_setup("imdb")


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


def test_combined_margins_are_the_worst_task_for_each_part():
    per_task = {
        "topics": {"accuracy": 4.0, "latency": -2.0, "parameters": 40.0},
        "listops": {"accuracy": -3.0, "latency": 5.0, "parameters": 45.0},
    }
    assert wide_attention.combine(per_task) == {
        "accuracy": -3.0,
        "latency": -2.0,
        "parameters": 40.0,
    }
    # a pass on one task does not rescue a failure on the other
    assert wide_attention.combine({"topics": per_task["topics"]})["accuracy"] == 4.0
    with pytest.raises(ClaimError, match="no task margins"):
        wide_attention.combine({})


@pytest.mark.parametrize(
    ("task", "vocab", "length", "classes"), [("topics", 258, 128, 24), ("listops", 17, 64, 10)]
)
def test_arms_hold_the_total_number_of_heads_and_the_control_is_not_widened(
    task, vocab, length, classes
):
    heads = {}
    for arm in wide_attention.ARMS:
        run = wide_attention.arm_run(arm, 100, 0, task)
        model = run.model
        assert (model.vocab_size, model.max_seq_len, model.head.num_classes) == (
            vocab,
            length,
            classes,
        )
        assert run.task.kind == wide_attention.task_setup(task)[0]["kind"]
        heads[arm] = (model.depth, model.num_heads, model.attention.head_dim)
    assert heads["deep"] == (4, 4, 16)
    assert heads["wide"] == (1, 16, 16)
    assert heads["narrow"] == (1, 4, 16)


def test_listops_fits_its_sequence_length():
    cfg = wide_attention.LISTOPS_CONFIG
    assert cfg["max_length"] <= cfg["seq_len"]  # expressions are shorter than max_length (+ CLS)
    assert wide_attention.arm_run("deep", 100, 0, "listops").task.seq_len == cfg["seq_len"]


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
    """Two fixture topics, short ListOps expressions, 40 training examples, 3 steps each, small
    latency loop."""
    for package, topic, word in (
        ("fortunes", "alpha", "apples"),
        ("fortunes-min", "beta", "bricks"),
    ):
        (tmp_path / "fortunes" / package).mkdir(parents=True)
        texts = [f"{word} {i} {word}" for i in range(40)]
        (tmp_path / "fortunes" / package / topic).write_text("\n%\n".join(texts) + "\n%\n")
    sizes = {"train_size": 40, "val_size": 20, "test_size": 20, "eval_batches": 2}
    topics = {
        **wide_attention.TASK_CONFIG,
        **sizes,
        "root": str(tmp_path / "fortunes"),
        "min_examples_per_class": 1,
        "seq_len": 32,
    }
    listops = {
        **wide_attention.LISTOPS_CONFIG,
        **sizes,
        "min_length": 3,
        "max_length": 16,
        "seq_len": 16,
        "max_depth": 3,
    }
    monkeypatch.setattr(wide_attention, "TASK_CONFIG", topics)
    monkeypatch.setattr(wide_attention, "LISTOPS_CONFIG", listops)
    monkeypatch.setattr(wide_attention, "NUM_TOPICS", 2)
    monkeypatch.setattr(wide_attention, "STEPS", {"quick": 3, "full": 3})
    monkeypatch.setattr(wide_attention, "LISTOPS_STEPS", {"quick": 2, "full": 2})
    monkeypatch.setattr(wide_attention, "LATENCY_RUNS", 2)
    monkeypatch.setattr(wide_attention, "LATENCY_BATCH", 4)
    train = {**wide_attention.TRAIN_CONFIG, "batch_size": 4, "schedule": {"kind": "constant"}}
    monkeypatch.setattr(wide_attention, "TRAIN_CONFIG", train)
    monkeypatch.setattr(wide_attention, "MIN_LEARNED", -100.0)  # tiny runs learn nothing


def test_measure_trains_each_arm_once_per_task_and_notes_both_tables(tiny_setup):
    check = get_check("wide_attention")
    value = check.measure("claim", "quick", 0)
    claim = dict(check.details)
    check.details.clear()
    control = check.measure("control", "quick", 0)
    notes = check.details
    # deep (shared by the claim and its control), wide and narrow, on each task, trained once
    assert sorted(check._trained_arms) == sorted(
        (task, arm, "quick", 0) for task in wide_attention.TASKS for arm in wide_attention.ARMS
    )
    assert claim["arm"] == "wide" and notes["arm"] == "narrow"
    for task, steps in (("topics", 3), ("listops", 2)):
        assert set(claim[task]["accuracy"]) == {"deep", "wide"}
        assert set(notes[task]["accuracy"]) == {"deep", "wide", "narrow"}  # the full table
        assert claim[task]["accuracy"]["deep"] == notes[task]["accuracy"]["deep"]
        assert claim[task]["accuracy"]["wide"] == notes[task]["accuracy"]["wide"]
        assert claim[task]["parameters"] < claim[task]["deep_parameters"]
        assert notes[task]["parameters"] < claim[task]["parameters"]
        assert claim[task]["steps"] == steps
        assert 0.0 <= claim[task]["majority_baseline"] <= 100.0
        acc = claim[task]["accuracy"]
        assert claim[task]["margins"]["accuracy"] == pytest.approx(
            acc["wide"] - acc["deep"] + wide_attention.MAX_ACC_DROP
        )
    # each part is the worse task's, and the metric the smallest part
    for notes_of, found in ((claim, value), (notes, control)):
        for part in wide_attention.PARTS:
            worst = min(notes_of[task]["margins"][part] for task in wide_attention.TASKS)
            assert notes_of["margins"][part] == pytest.approx(worst)
        assert found == pytest.approx(min(notes_of["margins"].values()))
    # the tasks differ: different vocabularies and heads give different parameter counts
    assert claim["topics"]["deep_parameters"] != claim["listops"]["deep_parameters"]


def test_a_deep_model_that_did_not_learn_makes_the_check_inconclusive(tiny_setup, monkeypatch):
    monkeypatch.setattr(wide_attention, "MIN_LEARNED", 101.0)  # no accuracy clears this
    check = get_check("wide_attention")
    with pytest.raises(Inconclusive, match="less than 101 points above the majority") as info:
        check.measure("claim", "quick", 0)
    assert "topics: deep" in info.value.reason and "listops: deep" in info.value.reason
    assert info.value.value == pytest.approx(min(check.details["margins"].values()))
