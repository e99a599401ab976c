"""The training loop in-process: run directory, records, accumulation, clipping, eval isolation,
NaN skipping, refusing a non-empty directory, resume and corrupt-checkpoint fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from trainer_testkit import tiny_run

import formerlab as fl
from formerlab.train import checkpoint as ck
from formerlab.train import trainer as tr

TIMING = set(tr.TIMING_FIELDS)


def run_cfg(task: dict | None = None, model: dict | None = None, **train) -> fl.RunConfig:
    data = tiny_run(**train)
    data["task"].update(task or {})
    data["model"].update(model or {})
    return fl.load_config(data)


def records(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in tr.read_metrics(out / "metrics.jsonl")
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ref") / "run"
    return out, tr.train(run_cfg(), out, progress=False)


def test_run_directory_layout(reference) -> None:
    out, summary = reference
    assert yaml.safe_load((out / "config.yaml").read_text()) == run_cfg().to_dict()
    assert list(out.glob("events.out.tfevents.*"))
    assert summary["data"] == {"vocab_size": 16, "seq_len": 16, "seed": 0}
    assert [s for s, _ in ck.step_dirs(out / "checkpoints")] == [4, 8, 12]
    assert summary["final_step"] == 12 and summary["start_step"] == 0
    assert summary["checkpoint"] == str(out / "checkpoints" / "step_12")
    assert summary["val"]["val_loss"] > 0 and 0 <= summary["val"]["accuracy"] <= 1
    assert summary["tokens"] == 12 * 2 * 4 * 16 and summary["skipped_steps"] == 0


def test_metrics_records(reference) -> None:
    out, summary = reference
    raw = tr.read_metrics(out / "metrics.jsonl")
    train_recs = [r for r in raw if "loss" in r]
    val_recs = [r for r in raw if "val_loss" in r]
    assert [r["step"] for r in train_recs] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in val_recs] == [4, 8, 12]
    for r in train_recs:
        assert {
            "step",
            "loss",
            "lr",
            "grad_norm",
            "tokens",
            "tokens_per_s",
            "elapsed_s",
            "skipped_steps",
        } <= set(r)
        assert r["tokens"] == r["step"] * 128 and r["tokens_per_s"] > 0
    # the logged lr is the schedule's value at the logged (1-based) step
    sched = fl.train.build_schedule(run_cfg().train.schedule, 12)
    assert [r["lr"] for r in train_recs] == [
        3e-3 * sched.factor(s - 1) for s in (2, 4, 6, 8, 10, 12)
    ]
    assert summary["val"] == {k: v for k, v in val_recs[-1].items() if k != "step"}
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]  # it learns


def test_training_is_deterministic(reference, tmp_path: Path) -> None:
    tr.train(run_cfg(), tmp_path / "again", progress=False)
    assert records(tmp_path / "again") == records(reference[0])


def test_refuses_a_non_empty_run_dir_without_resume(reference) -> None:
    out, _ = reference
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(fl.ConfigError, match=r"out: run directory .* is not empty.*--resume"):
        tr.train(run_cfg(), out, progress=False)
    assert sorted(p.name for p in out.rglob("*")) == before
    (out.parent / "file").write_text("x")
    with pytest.raises(fl.ConfigError, match="is a file"):
        tr.train(run_cfg(), out.parent / "file", progress=False)


def test_resume_refuses_a_different_config(reference) -> None:
    out, _ = reference
    with pytest.raises(fl.ConfigError, match=r"train\.optimizer\.lr: 0\.003 -> 0\.1"):
        tr.train(run_cfg(optimizer={"kind": "adamw", "lr": 0.1}), out, resume=True, progress=False)


def test_resume_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(fl.ConfigError, match="not a formerlab run directory"):
        tr.train(run_cfg(), tmp_path, resume=True, progress=False)


def test_resuming_a_finished_run_changes_nothing(reference) -> None:
    out, summary = reference
    before = records(out)
    again = tr.train(run_cfg(), out, resume=True, progress=False)
    assert again["start_step"] == again["final_step"] == 12 and again["val"] == summary["val"]
    assert records(out) == before


def test_resume_falls_back_past_a_corrupt_checkpoint(reference, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    weights = out / "checkpoints" / "step_12" / ck.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.warns(ck.CorruptCheckpointWarning, match="step_12"):
        summary = tr.train(run_cfg(), out, resume=True, progress=False)
    assert summary["resumed_from"] == str(out / "checkpoints" / "step_8")
    assert (out / "checkpoints" / "corrupt" / "step_12").is_dir()
    assert records(out) == records(reference[0])  # steps 9..12 redone identically


def test_resume_can_extend_a_run(reference, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    summary = tr.train(run_cfg(steps=14), out, resume=True, progress=False)
    assert summary["start_step"] == 12 and summary["final_step"] == 14
    assert [r["step"] for r in records(out)][-2:] == [14, 14]
    with pytest.raises(fl.ConfigError, match=r"train\.steps: 10 is below .* step 14"):
        tr.train(run_cfg(steps=10), out, resume=True, progress=False)


def test_evaluation_does_not_shift_the_training_rng(tmp_path: Path) -> None:
    tr.train(run_cfg(eval_every=1), tmp_path / "a", progress=False)
    tr.train(run_cfg(eval_every=0), tmp_path / "b", progress=False)
    losses = [[r for r in records(tmp_path / d) if "loss" in r] for d in "ab"]
    assert losses[0] == losses[1]
    assert len([r for r in records(tmp_path / "a") if "val_loss" in r]) == 12


def test_dropout_is_live_during_training(tmp_path: Path) -> None:
    tr.train(run_cfg(), tmp_path / "a", progress=False)
    tr.train(run_cfg(model={"dropout": 0.0}), tmp_path / "b", progress=False)
    la, lb = ([r["loss"] for r in records(tmp_path / d) if "loss" in r] for d in "ab")
    assert la != lb


def make_trainer(tmp_path: Path, **train) -> tr.Trainer:
    run = run_cfg(model={"dropout": 0.0}, **train)
    task, model = tr._build(run, tmp_path)
    return tr.Trainer(run, tmp_path, task, model)


def test_gradient_accumulation_averages_micro_batches(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, grad_accum=3)
    loss = t.forward_backward(step0=2)
    accumulated = [p.grad.clone() for p in t.params]
    t.optimizer.zero_grad()
    expected, total = [torch.zeros_like(p) for p in t.params], 0.0
    for index in (6, 7, 8):
        micro, _ = t.task.loss(t.model, t.task.batch("train", index, 4))
        micro.backward()
        total += float(micro.detach()) / 3
        for acc, p in zip(expected, t.params, strict=True):
            acc += p.grad / 3
        t.optimizer.zero_grad()
    assert loss == pytest.approx(total)
    for a, b in zip(accumulated, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_gradients_are_clipped_before_the_update(tmp_path: Path) -> None:
    t = make_trainer(tmp_path, grad_clip=1e-3)
    seen = []
    step = t.optimizer.step

    def spy(*args, **kwargs):
        seen.append(float(torch.nn.utils.get_total_norm([p.grad for p in t.params])))
        return step(*args, **kwargs)

    t.optimizer.step = spy
    _, norm, taken = t.step(0)
    assert taken and norm > 1e-2
    assert seen == [pytest.approx(1e-3, rel=1e-3)]


def tensors(path: Path) -> tuple[dict, dict]:
    weights = load_file(path / ck.WEIGHTS)
    state = torch.load(path / ck.STATE, weights_only=True)
    return weights, state["optimizer"]["state"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_same(a[k], b[k])
        else:
            assert torch.equal(a[k], b[k]), k


def test_a_non_finite_step_is_skipped_without_touching_state(tmp_path: Path) -> None:
    # grad_accum=2: optimizer step index 2 (the 3rd step) reads micro-batches 4 and 5
    run = run_cfg(task={"kind": "trainer_kit_nan", "nan_batches": [5]}, steps=5, checkpoint_every=1)
    summary = tr.train(run, tmp_path, progress=False)
    ckpts = tmp_path / "checkpoints"
    w2, o2 = tensors(ckpts / "step_2")
    w3, o3 = tensors(ckpts / "step_3")
    w4, _ = tensors(ckpts / "step_4")
    assert_same(w2, w3)
    assert_same(o2, o3)
    assert any(not torch.equal(w3[k], w4[k]) for k in w3)  # training went on
    skipped = [r for r in tr.read_metrics(tmp_path / "metrics.jsonl") if r.get("skipped")]
    assert [(r["step"], r["loss"], r["skipped_steps"]) for r in skipped] == [(3, None, 1)]
    assert summary["skipped_steps"] == 1 and summary["final_step"] == 5


def test_too_many_consecutive_skips_stop_with_a_valid_checkpoint(tmp_path: Path) -> None:
    nan = {"kind": "trainer_kit_nan", "nan_batches": list(range(4, 20))}  # steps 3.. are NaN
    run = run_cfg(task=nan, steps=10, max_consecutive_skips=2, checkpoint_every=100)
    with pytest.raises(
        fl.TrainingError, match=r"train\.max_consecutive_skips: 3 consecutive .* step 5"
    ):
        tr.train(run, tmp_path, progress=False)
    latest = ck.latest_valid_checkpoint(tmp_path / "checkpoints")
    assert latest == tmp_path / "checkpoints" / "step_5"
    state = ck.load_checkpoint(latest, fl.build_model(run.model))
    assert state["skipped_steps"] == 3 and state["step"] == 5
    assert all(torch.isfinite(t).all() for t in load_file(latest / ck.WEIGHTS).values())
    skipped = [r["step"] for r in tr.read_metrics(tmp_path / "metrics.jsonl") if r.get("skipped")]
    assert skipped == [3, 4, 5]


def test_truncate_metrics_drops_later_and_torn_records(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines) + '\n{"step": 5, "lo')
    kept = tr.truncate_metrics(path, 2)
    assert [r["step"] for r in kept] == [1, 2]
    assert path.read_text() == "\n".join(lines[:2]) + "\n"


def test_threads_are_set_for_the_run_and_restored(tmp_path: Path, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(tr.Trainer, "save", lambda self: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    tr.train(run_cfg(threads=1, steps=2, checkpoint_every=1), tmp_path, progress=False)
    assert seen == [1, 1] and torch.get_num_threads() == before


def test_task_checks_the_model_before_training(tmp_path: Path) -> None:
    with pytest.raises(fl.ConfigError, match=r"model\.vocab_size: 8 is smaller"):
        tr.train(run_cfg(model={"vocab_size": 8}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_invalid_fault_request_fails_before_training(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FORMERLAB_FAULT", "sometime")
    with pytest.raises(fl.ConfigError, match="FORMERLAB_FAULT"):
        tr.train(run_cfg(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_accepts_a_plain_run_dict(tmp_path: Path) -> None:
    summary = tr.train(tiny_run(steps=2), tmp_path / "run", progress=False)
    assert summary["final_step"] == 2 and (tmp_path / "run" / "checkpoints" / "step_2").is_dir()


def test_parts_reimpose_constraints_after_each_optimizer_step(tmp_path: Path, monkeypatch) -> None:
    """A part's ``after_optimizer_step`` runs after the update, without autograd, once per step."""
    from formerlab.layers.linear import DenseLinear

    calls = []

    def cap(self):
        calls.append(torch.is_grad_enabled())
        self.weight.clamp_(-1e-3, 1e-3)  # an in-place edit of a leaf: needs no_grad

    monkeypatch.setattr(DenseLinear, "after_optimizer_step", cap, raising=False)
    t = make_trainer(tmp_path)
    denses = [m for m in t.model.modules() if isinstance(m, DenseLinear)]
    t.set_lr(0)
    _, _, taken = t.step(0)
    assert taken and calls == [False] * len(denses)
    assert all(float(m.weight.detach().abs().max()) <= 1.0001e-3 for m in denses)
