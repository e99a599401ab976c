"""Crashes of a real training process: each fault-injection point, and a `kill -9` at an arbitrary
moment. After `--resume`, metrics.jsonl must equal an uninterrupted run's (timing fields aside)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trainer_testkit
from trainer_testkit import tiny_run

import formerlab as fl
from formerlab.train import checkpoint as ck
from formerlab.train import trainer as tr

KIT = Path(trainer_testkit.__file__).resolve()
TIMING = set(tr.TIMING_FIELDS)


def records(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in tr.read_metrics(out / "metrics.jsonl")
    ]


def launch(cfg: dict, out: Path, fault: str | None = None) -> subprocess.Popen:
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if k != ck.FAULT_ENV}
    if fault:
        env[ck.FAULT_ENV] = fault
    cmd = [sys.executable, str(KIT), str(path), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def resume(cfg: dict, out: Path) -> dict:
    return tr.train(fl.load_config(cfg), out, resume=True, progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ref") / "run"
    tr.train(fl.load_config(tiny_run()), out, progress=False)
    return records(out)


FAULTS = {"after_weights@8": 4, "after_state@8": 4, "before_rename@8": 4, "after_state": None}


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> dict[str, tuple[Path, subprocess.Popen]]:
    """One real training process per fault point, run side by side, each killed by its fault."""
    base = tmp_path_factory.mktemp("faults")
    procs = {f: (base / f.replace("@", "_at_"), None) for f in FAULTS}
    procs = {f: (out, launch(tiny_run(), out, f)) for f, (out, _) in procs.items()}
    for _, proc in procs.values():
        proc.communicate(timeout=180)
    return procs


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_point_kills_and_resume_completes(crashed, reference: list[dict], fault: str) -> None:
    out, proc = crashed[fault]
    survivor = FAULTS[fault]
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    root = out / "checkpoints"
    leftovers = [p for p in root.iterdir() if p.name.startswith(ck.TMP_PREFIX)]
    assert len(leftovers) == 1  # the half-written checkpoint, never renamed to step_N
    assert [s for s, _ in ck.step_dirs(root)] == ([survivor] if survivor else [])
    latest = ck.latest_valid_checkpoint(root)
    assert latest == (root / f"step_{survivor}" if survivor else None)
    assert not any(p.name.startswith(ck.TMP_PREFIX) for p in root.iterdir())
    summary = resume(tiny_run(), out)
    assert summary["start_step"] == (survivor or 0) and summary["final_step"] == 12
    assert records(out) == reference


def test_kill_9_at_an_arbitrary_moment_then_resume_is_exact(tmp_path: Path) -> None:
    # checkpoints every 3 steps, logs every 2: a log window spans each checkpoint
    cfg = tiny_run(steps=60, checkpoint_every=3, eval_every=5, keep_checkpoints=2)
    expected_dir = tmp_path / "uninterrupted"
    tr.train(fl.load_config(cfg), expected_dir, progress=False)
    out = tmp_path / "killed"
    proc = launch(cfg, out)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step_3").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    time.sleep(random.uniform(0.0, 0.3))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # it really died mid-run
    assert records(out)  # it had logged before it died
    summary = resume(cfg, out)
    assert summary["start_step"] >= 3 and summary["final_step"] == 60
    assert records(out) == records(expected_dir)
