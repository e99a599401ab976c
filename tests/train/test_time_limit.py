"""``train.time_limit_s``: stop after the step during which the limit passed, end like a normal run
(final log, evaluation, checkpoint), and resume from there exactly like any other checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_testkit import tiny_run

import formerlab as fl
from formerlab.train import trainer as tr

TIMING = set(tr.TIMING_FIELDS)


def run_cfg(**train) -> fl.RunConfig:
    return fl.load_config(tiny_run(**train))


def records(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in tr.read_metrics(out / "metrics.jsonl")
    ]


@pytest.fixture
def ten_seconds_per_step(monkeypatch):
    """A fake clock: the loop's elapsed time is 10 s per step taken."""
    monkeypatch.setattr(tr._Session, "elapsed", lambda self: 10.0 * self.t.state.step)


def test_stops_after_the_step_during_which_the_limit_passed(tmp_path, ten_seconds_per_step):
    out = tmp_path / "run"
    summary = tr.train(run_cfg(time_limit_s=25.0), out, progress=False)
    assert summary["final_step"] == 3 and summary["time_limited"] is True  # 20 s < 25 s <= 30 s
    assert summary["checkpoint"] == str(out / "checkpoints" / "step_3")
    recs = records(out)
    assert [r["step"] for r in recs if "loss" in r][-1] == 3  # the final train record
    assert recs[-1]["step"] == 3 and "val_loss" in recs[-1]  # the final evaluation
    assert summary["val"]["val_loss"] == recs[-1]["val_loss"]


def test_a_limit_never_reached_changes_nothing(tmp_path, ten_seconds_per_step):
    limited = tr.train(run_cfg(time_limit_s=1000.0), tmp_path / "a", progress=False)
    plain = tr.train(run_cfg(), tmp_path / "b", progress=False)
    assert limited["final_step"] == plain["final_step"] == 12
    assert limited["time_limited"] is plain["time_limited"] is False
    assert records(tmp_path / "a") == records(tmp_path / "b")


def test_resume_past_the_limit_continues_like_an_uninterrupted_run(tmp_path) -> None:
    out = tmp_path / "run"
    first = tr.train(run_cfg(time_limit_s=1e-6), out, progress=False)  # one step outlasts 1 µs
    assert first["final_step"] == 1 and first["time_limited"] is True
    again = tr.train(run_cfg(time_limit_s=1e-6), out, resume=True, progress=False)
    assert again["final_step"] == 1  # still out of time: no further step
    rest = tr.train(run_cfg(), out, resume=True, progress=False)  # the limit may change on resume
    assert rest["start_step"] == 1 and rest["final_step"] == 12 and not rest["time_limited"]
    straight = tmp_path / "straight"
    tr.train(run_cfg(), straight, progress=False)
    # the stop adds a step-1 log and evaluation; step 2's log then averages one step, not two;
    # from step 3 on (weights, RNG, data position all restored) the records are identical
    assert [r for r in records(out) if r["step"] > 2] == [
        r for r in records(straight) if r["step"] > 2
    ]
    stop_records = [r for r in records(out) if r["step"] == 1]
    assert len(stop_records) == 2 and "val_loss" in stop_records[1]


@pytest.mark.parametrize("value", [0, -1.5])
def test_bad_time_limit(value) -> None:
    with pytest.raises(
        fl.ConfigError, match=rf"train.time_limit_s: invalid value {float(value)}; allowed: > 0"
    ):
        run_cfg(time_limit_s=value)
