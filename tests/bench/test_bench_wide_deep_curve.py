"""benchmarks/wide_deep_curve.py at tiny sizes: the deep arm's run, JSON lines every N steps."""

from __future__ import annotations

import argparse
import json

import pytest


@pytest.fixture(scope="module")
def curve(load_benchmark):
    return load_benchmark("wide_deep_curve")


def test_prints_a_line_per_evaluation_of_the_deep_arm(curve, capsys):
    args = ["--task", "keywords", "--strings", "2", "--seq-len", "32", "--steps", "60"]
    curve.main([*args, "--every", "30", "--position", "rope"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["step"] for r in rows] == [30, 60]
    assert all(0 <= r["val_accuracy"] <= 100 and 50 <= r["majority"] <= 100 for r in rows)
    assert all(r["train_loss"] > 0 for r in rows)


def test_the_run_is_the_checks_deep_arm_with_the_asked_changes(curve):
    ns = argparse.Namespace(
        task="listops", steps=300, seed=100, lr=3e-3, position="rope", strings=14, seq_len=128
    )
    run = curve.run_config(ns)
    assert run.model.depth == 4 and run.model.num_heads == 4 and run.model.position.kind == "rope"
    assert run.train.optimizer.lr == 3e-3 and run.train.steps == 300 and run.train.seed == 100
    assert run.task.kind == "listops"


def test_every_must_fit_in_the_steps(curve):
    with pytest.raises(SystemExit):
        curve.main(["--task", "keywords", "--steps", "10", "--every", "20"])
