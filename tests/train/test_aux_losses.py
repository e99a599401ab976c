"""Auxiliary losses and layer metrics (``layers/aux.py``) in the training loops: the trainer adds them
to the objective, logs the MoE metrics, reports active parameters and still resumes exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from trainer_testkit import tiny_run

import formerlab as fl
from formerlab.claims import lra
from formerlab.layers.aux import clear_aux, collect_aux, parameter_counts, record_aux, take_records
from formerlab.train import trainer as tr

TIMING = set(tr.TIMING_FIELDS)
MOE = {
    "kind": "moe",
    "num_experts": 4,
    "top_k": 2,
    "capacity_factor": 1.0,
    "router_jitter": 0.1,  # draws from the global RNG: resume must restore it
    "aux_loss_weight": 0.05,
    "z_loss_weight": 0.01,
}
#: checkpoints fall inside log windows, so resuming needs the saved partial window of aux metrics
MID_WINDOW = {"log_every": 3, "checkpoint_every": 4}
MOE_KEYS = {"moe_load", "moe_load_cv", "moe_dropped_frac", "moe_balance_loss", "moe_z_loss"}


class Reporter(torch.nn.Module):
    """Records ``weight * sum(p)`` as its aux loss and fixed metrics."""

    def __init__(self, value: float, load: list[float], inactive: int = 0) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        self.value, self.load, self.inactive = value, load, inactive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        record_aux(self, self.value * self.p.sum(), {"m": self.value, "load": self.load})
        return x

    def inactive_params(self) -> int:
        return self.inactive


def test_collect_aux_sums_losses_averages_metrics_and_takes_the_records() -> None:
    model = torch.nn.Sequential(Reporter(1.0, [0.5, 0.5], 1), Reporter(3.0, [1.0, 0.0]))
    model(torch.zeros(1))
    loss, metrics = collect_aux(model)
    assert float(loss.detach()) == pytest.approx(1.0 * 3 + 3.0 * 3)
    assert metrics == {"m": 2.0, "load": [0.75, 0.25], "aux_loss": pytest.approx(12.0)}
    assert collect_aux(model) == (None, {})  # taken: never counted twice
    model(torch.zeros(1))
    clear_aux(model)
    assert take_records(model) == []


def test_metrics_of_different_lengths_are_not_averaged() -> None:
    model = torch.nn.Sequential(Reporter(1.0, [1.0]), Reporter(1.0, [0.5, 0.5]))
    model(torch.zeros(1))
    _, metrics = collect_aux(model)
    assert "load" not in metrics and metrics["m"] == 1.0


def test_parameter_counts_subtracts_inactive_params() -> None:
    model = torch.nn.Sequential(Reporter(1.0, [], inactive=1), torch.nn.Linear(3, 2))
    assert parameter_counts(model) == {"total": 2 + 8, "active": 2 + 8 - 1}


def run_cfg(ffn: dict | None = MOE, **train) -> fl.RunConfig:
    data = tiny_run(**train)
    data["model"].update({"dropout": 0.0, "ffn": ffn or {"kind": "mlp"}})
    return fl.load_config(data)


def records(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in tr.read_metrics(out / "metrics.jsonl")
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("moe") / "run"
    return out, tr.train(run_cfg(**MID_WINDOW), out, progress=False)


def test_trainer_adds_the_aux_loss_to_the_objective(tmp_path: Path) -> None:
    run = run_cfg(grad_accum=2)
    task, model = tr._build(run, tmp_path)
    t = tr.Trainer(run, tmp_path, task, model)
    state = torch.get_rng_state()
    loss = t.forward_backward(step0=1)
    got = [p.grad.clone() for p in t.params]
    t.optimizer.zero_grad()
    torch.set_rng_state(state)  # the same router jitter
    total, ce_only = 0.0, []
    for index in (2, 3):
        micro, _ = task.loss(model, task.batch("train", index, 4))
        aux, _ = collect_aux(model)
        ((micro + aux) / 2).backward()
        total += float(micro.detach()) / 2
    expected = [p.grad.clone() for p in t.params]
    t.optimizer.zero_grad()
    torch.set_rng_state(state)
    for index in (2, 3):
        (task.loss(model, task.batch("train", index, 4))[0] / 2).backward()
    ce_only = [p.grad.clone() for p in t.params]
    assert loss == pytest.approx(total)  # the logged loss is the task loss
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert any((a - c).abs().max() > 1e-6 for a, c in zip(got, ce_only, strict=True))
    assert set(t.step_aux) == MOE_KEYS | {"aux_loss"}


def test_records_log_the_moe_metrics(reference) -> None:
    out, _ = reference
    train_recs = [r for r in records(out) if "loss" in r]
    depth = run_cfg().model.depth
    for r in train_recs:
        assert MOE_KEYS | {"aux_loss"} <= set(r)
        assert len(r["moe_load"]) == 4 and sum(r["moe_load"]) == pytest.approx(1.0)
        assert 0 <= r["moe_dropped_frac"] < 1 and r["moe_load_cv"] >= 0
        # aux_loss sums the layers; the metrics average them (and every mean is over the window)
        weighted = MOE["aux_loss_weight"] * r["moe_balance_loss"]
        weighted += MOE["z_loss_weight"] * r["moe_z_loss"]
        assert r["aux_loss"] == pytest.approx(depth * weighted, rel=1e-6)  # float32
    assert not any(k.startswith("moe_") for r in records(out) if "val_loss" in r for k in r)


def test_summary_reports_active_parameters(reference) -> None:
    _, summary = reference
    model = fl.build_model(run_cfg().model)
    expert = sum(p.numel() for p in model.transformer.blocks[0].ffn.experts[0].parameters())
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["params"] - summary["active_params"] == 2 * (4 - 2) * expert


def test_dense_runs_log_no_aux_and_all_params_are_active(tmp_path: Path) -> None:
    summary = tr.train(run_cfg(None, steps=2, eval_every=0), tmp_path / "d", progress=False)
    assert summary["active_params"] == summary["params"]
    assert not any("aux_loss" in r or "moe_load" in r for r in records(tmp_path / "d"))


def test_resume_with_moe_is_exact(reference, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    shutil.rmtree(out / "checkpoints" / "step_12")
    summary = tr.train(run_cfg(**MID_WINDOW), out, resume=True, progress=False)
    assert summary["resumed_from"] == str(out / "checkpoints" / "step_8")
    assert records(out) == records(reference[0])  # aux metrics included, bit for bit


def test_evaluation_leaves_no_records(tmp_path: Path) -> None:
    run = run_cfg()
    task, model = tr._build(run, tmp_path)
    t = tr.Trainer(run, tmp_path, task, model)
    t.evaluate()
    assert take_records(model) == []


def test_lra_train_model_adds_the_aux_loss() -> None:
    """The claims' training loop: a model whose only gradient comes from its aux loss learns."""

    class Task:
        def batch(self, split, index, batch_size):
            return {"x": torch.zeros(1)}

        def loss(self, model, batch):
            return model(batch["x"]).sum() * 0.0, 1

    run = fl.load_config(
        {
            "model": {"kind": "decoder_lm"},
            "task": {"kind": "copy"},
            "train": {
                "steps": 2,
                "optimizer": {"kind": "adamw", "lr": 0.1, "weight_decay": 0.0},
                "schedule": {"kind": "constant", "warmup_steps": 0},
            },
        }
    )
    model = Reporter(1.0, [])
    lra.train_model(run, Task(), model)
    assert (model.p.detach() < torch.tensor([1.0, 2.0])).all()  # d(aux)/dp = 1 > 0: p went down
