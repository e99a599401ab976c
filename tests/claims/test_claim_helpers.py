"""The helpers several claim checks share: argument checking of ``measure`` (claims/base.py) and
the seeded build / task loading / scored training of claims/lra.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from formerlab.claims import get_check, lra
from formerlab.errors import ClaimError, ConfigError
from formerlab.run_config import load_config

TINY = {
    **lra.LISTOPS_TINY,
    "model": {**lra.LISTOPS_TINY["model"], "dim": 16, "depth": 1, "num_heads": 2},
    "task": {
        **lra.LISTOPS_TINY["task"],
        "train_size": 64,
        "val_size": 16,
        "test_size": 8,
        "eval_batches": 2,
    },
}


def tiny_run(steps: int, seed: int = 0):
    train = {**TINY["train"], "batch_size": 8, "steps": steps, "seed": seed}
    train["schedule"] = {"kind": "cosine", "warmup_steps": 1}
    return load_config({**TINY, "train": train})


@pytest.mark.parametrize(
    ("variant", "budget", "shown"),
    [
        ("bogus", "quick", "measure('bogus', 'quick')"),
        ("claim", "huge", "measure('claim', 'huge')"),
    ],
)
def test_check_measure_args_names_the_check_the_value_and_what_is_allowed(variant, budget, shown):
    check = get_check("lra")
    with pytest.raises(ClaimError) as info:
        check.check_measure_args(variant, budget, {"quick": 1, "full": 2})
    message = str(info.value)
    assert message.startswith("claim 'lra': ") and shown in message
    assert "allowed variants: claim, control; budgets: quick, full" in message


def test_check_measure_args_accepts_every_variant_and_budget():
    check = get_check("lra")
    for variant in ("claim", "control"):
        for budget in ("short", "long"):
            check.check_measure_args(variant, budget, ("short", "long"))
    with pytest.raises(ClaimError, match="budgets: short, long"):
        check.check_measure_args("claim", "quick", ("short", "long"))


def test_seeded_model_depends_only_on_the_run_seed():
    torch.manual_seed(123)
    a = lra.seeded_model(tiny_run(1, seed=5))
    torch.rand(7)  # the global generator moved on: the next model is seeded again
    b = lra.seeded_model(tiny_run(1, seed=5))
    c = lra.seeded_model(tiny_run(1, seed=6))
    pairs = list(zip(a.parameters(), b.parameters(), strict=True))
    assert all(torch.equal(p, q) for p, q in pairs)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_load_task_checks_the_model_before_training():
    run = tiny_run(1)
    task = lra.load_task(run, 0)
    assert task.config.kind == "listops" and len(task.splits["train"].labels) == 64
    short = load_config(
        {
            **TINY,
            "model": {**TINY["model"], "max_seq_len": 50},
            "task": {**TINY["task"], "seq_len": 50, "max_length": 50},
        }
    )  # valid on its own; its model is too short for ``run``'s task
    with pytest.raises(ConfigError, match="max_seq_len: 50"):
        lra.load_task(SimpleNamespace(task=run.task, model=short.model), 0)


def test_train_new_model_trains_the_seeded_model():
    run = tiny_run(2)
    task = lra.load_task(run, 0)
    untrained = lra.seeded_model(run)
    trained = lra.train_new_model(run, task)
    assert trained.training
    pairs = zip(untrained.parameters(), trained.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)


class _CountingTask:
    """Delegates to a task and counts the training batches fetched (one per step)."""

    def __init__(self, task) -> None:
        self.task, self.steps = task, 0

    def batch(self, split, index, batch_size):
        self.steps += split == "train"
        return self.task.batch(split, index, batch_size)

    def loss(self, model, batch):
        return self.task.loss(model, batch)


def test_train_scored_scores_at_three_quarters_and_at_the_end_in_training_mode():
    run = tiny_run(8)
    task = _CountingTask(lra.load_task(run, 0))
    calls = []

    def score(model: torch.nn.Module) -> float:
        calls.append((task.steps, model.training))
        model.eval()  # as task.evaluate does; training must resume in training mode
        return float(10 * task.steps)

    final, late = lra.train_scored(run, task, score)
    assert (final, late) == (80.0, 60.0)
    assert calls == [(6, True), (8, True)]


def test_train_scored_without_a_three_quarter_step_gives_nan():
    run = tiny_run(1)  # 3/4 of 1 step rounds to step 0, which is never reached
    final, late = lra.train_scored(run, lra.load_task(run, 0), lambda model: 7.0)
    assert final == 7.0 and math.isnan(late)
