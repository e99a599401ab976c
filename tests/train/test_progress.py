"""Progress display (bar vs plain lines) and the ``python -m formerlab.train`` entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from trainer_testkit import tiny_run

import formerlab as fl
from formerlab.train import progress as pg
from formerlab.train import trainer as tr
from formerlab.train.__main__ import main


@pytest.mark.parametrize(
    ("progress", "tty", "ci", "expected"),
    [
        (True, False, "true", True),
        (False, True, None, False),
        (None, False, None, False),
        (None, True, "true", False),
        (None, True, "TRUE", False),
        (None, True, None, True),
        (None, True, "false", True),
    ],
)
def test_bar_only_on_a_terminal_outside_ci(monkeypatch, progress, tty, ci, expected) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: tty)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert pg.use_bar(progress) is expected
    assert isinstance(pg.make_progress(progress, 10), pg.RichProgress) is expected


def test_plain_lines_format(capsys) -> None:
    with pg.PlainProgress(total_steps=100) as p:
        p.record({"step": 10, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 12345.6}, eta_s=3725)
        p.record({"step": 10, "val_loss": 2.25, "accuracy": 0.5})
        p.record({"step": 20, "loss": None, "lr": 1e-3, "tokens_per_s": 1.0, "skipped_steps": 2})
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "step 10/100 | loss 2.5 | lr 1.000e-03 | 12,346 tok/s | eta 1:02:05",
        "eval step 10/100 | val_loss 2.25 | accuracy 0.5",
        "step 20/100 | loss n/a | lr 1.000e-03 | 1 tok/s | skipped 2",
    ]


def test_plain_training_prints_one_line_per_log_step(tmp_path: Path, capsys) -> None:
    tr.train(fl.load_config(tiny_run(steps=6, log_every=2)), tmp_path / "run", progress=False)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" |")[0] for line in lines if line.startswith("step ")] == [
        "step 2/6",
        "step 4/6",
        "step 6/6",
    ]
    assert all(
        re.search(r"loss [\d.]+ \| lr [\d.e+-]+ \| [\d,]+ tok/s \| eta", line)
        for line in lines
        if line.startswith("step ")
    )


def test_bar_training_runs_and_prints_evaluations(tmp_path: Path, capsys) -> None:
    summary = tr.train(fl.load_config(tiny_run(steps=4)), tmp_path / "run", progress=True)
    assert summary["final_step"] == 4
    assert "eval step 4/4" in capsys.readouterr().out


def test_module_entry_point(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(tiny_run()))
    args = [str(cfg), "--out", str(tmp_path / "run"), "--set", "train.steps=3", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["final_step"] == 3
    assert main(args) == 2
    assert "error: out: run directory" in capsys.readouterr().err
    assert main([*args, "--resume", "--set", "train.steps=4"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["start_step"] == 3
