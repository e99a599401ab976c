"""``formerlab compare``: planning, budgets (steps or wall-clock time), validation before compute,
and real runs."""

from __future__ import annotations

import json

import pytest
import yaml

from formerlab.compare import Budget, compare, parse_budget, plan, summarize
from formerlab.errors import ConfigError
from formerlab.report.compare import display_rows

RUN = {
    "model": {
        "kind": "decoder_lm",
        "vocab_size": 17,
        "dim": 16,
        "depth": 1,
        "num_heads": 2,
        "max_seq_len": 16,
    },
    "task": {"kind": "copy", "seq_len": 16, "eval_batches": 1},
    "train": {
        "steps": 4,
        "batch_size": 4,
        "log_every": 2,
        "eval_every": 2,
        "checkpoint_every": 4,
        "schedule": {"kind": "constant"},
    },
}


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(RUN))
    return path


def test_sweep_plans_every_variant_and_seed(base) -> None:
    runs = plan(base, sweep="model.norm.kind=layernorm,rmsnorm", seeds=2, steps=3)
    assert [(v.name, s) for v, s, _ in runs] == [
        ("layernorm", 0),
        ("layernorm", 1),
        ("rmsnorm", 0),
        ("rmsnorm", 1),
    ]
    assert {r.model.norm.kind for _, _, r in runs} == {"layernorm", "rmsnorm"}
    assert all(r.train.steps == 3 for _, _, r in runs)


def test_variant_files_are_merged_into_the_base(base, tmp_path) -> None:
    (tmp_path / "wide.yaml").write_text("model: {dim: 32}\n")
    runs = plan(base, variants=[tmp_path / "wide.yaml"], seeds=1)
    assert runs[0][0].name == "wide" and runs[0][2].model.dim == 32 and runs[0][2].model.depth == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"sweep": "model.norm.kind=layernorm,batchnorm"},
            "variant 'batchnorm'.*unknown norm kind",
        ),
        ({"sweep": "model.depth"}, "--sweep: invalid value"),
        ({}, "exactly one of --variants"),
        ({"sweep": "model.depth=1,1"}, "variant names repeat"),
        ({"sweep": "model.depth=1", "seeds": 0}, "--seeds: invalid value 0"),
    ],
)
def test_bad_plans_fail_before_any_training(base, tmp_path, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        compare(base, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_summarize_means_and_spreads() -> None:
    results = [
        {
            "variant": "a",
            "val": {"accuracy": acc, "val_loss": 1.0},
            "tokens": 100,
            "elapsed_s": 2.0,
            "params": 10,
            "peak_rss_mb": mem,
            "final_step": step,
        }
        for acc, mem, step in ((0.5, 100.0, 40), (0.7, 120.0, 35))
    ]
    (row,) = summarize(results)
    assert row["steps"] == [35, 40] and display_rows([row])[0]["steps"] == "35-40"
    assert row["metric"] == "accuracy" and row["mean"] == pytest.approx(0.6)
    assert row["std"] == pytest.approx(0.1414, abs=1e-4) and row["peak_rss_mb"] == 120.0
    assert row["train_tokens_per_s"] == 50.0 and row["seeds"] == 2


def test_two_variants_train_and_report(base, tmp_path) -> None:
    out = tmp_path / "out"
    rows = compare(
        base, out, sweep="model.norm.kind=layernorm,rmsnorm", seeds=1, log=lambda _: None
    )
    assert [r["variant"] for r in rows] == ["layernorm", "rmsnorm"]
    assert all(r["peak_rss_mb"] > 50 and r["params"] > 0 for r in rows)
    assert all(r["steps"] == [4, 4] for r in rows)  # the run's train.steps, unchanged
    saved = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == ["layernorm", "rmsnorm"]
    html = (out / "report.html").read_text()
    assert "Learning curves" in html and html.count("data:image/png;base64,") == 2
    assert (out / "rmsnorm" / "seed_0" / "checkpoints" / "step_4").is_dir()


# -- budgets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "budget"),
    [
        ("300", Budget(steps=300)),
        ("300steps", Budget(steps=300)),
        ("1 step", Budget(steps=1)),
        ("90s", Budget(seconds=90.0)),
        ("2min", Budget(seconds=120.0)),
        ("1.5min", Budget(seconds=90.0)),
        (" 0.5 S ", Budget(seconds=0.5)),
    ],
)
def test_budget_strings(text, budget) -> None:
    assert parse_budget(text) == budget


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "allowed: N or Nsteps"),
        ("5h", "allowed: N or Nsteps"),
        ("", "allowed: N or Nsteps"),
        ("-3s", "allowed: N or Nsteps"),
        ("0", "steps must be an integer >= 1"),
        ("1.5steps", "steps must be an integer >= 1"),
        ("0s", "a time budget must be > 0"),
    ],
)
def test_bad_budget_strings_name_the_option(base, tmp_path, text, message) -> None:
    with pytest.raises(ConfigError, match=rf"--budget: invalid value {text!r}; .*{message}"):
        compare(base, tmp_path / "out", sweep="model.depth=1", budget=text)
    assert not (tmp_path / "out").exists()


def test_steps_and_budget_together_are_refused(base) -> None:
    with pytest.raises(ConfigError, match="at most one of --steps N and --budget"):
        plan(base, sweep="model.depth=1", steps=3, budget="3")


def test_budgets_become_train_fields(base) -> None:
    (run,) = [r for _, _, r in plan(base, sweep="model.depth=1", seeds=1, budget="7steps")]
    assert run.train.steps == 7 and run.train.time_limit_s is None
    (run,) = [r for _, _, r in plan(base, sweep="model.depth=1", seeds=1, budget="2min")]
    assert run.train.time_limit_s == 120.0 and run.train.steps == RUN["train"]["steps"]


def test_a_time_budget_stops_early_and_reports_the_steps_reached(tmp_path) -> None:
    run = {**RUN, "train": {**RUN["train"], "steps": 10**6, "log_every": 50}}
    run["train"].update(eval_every=0, checkpoint_every=0)
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(run))
    out = tmp_path / "out"
    (row,) = compare(path, out, sweep="model.depth=1", seeds=1, budget="1s", log=lambda _: None)
    low, high = row["steps"]
    assert 1 <= low == high < 10**6
    saved = json.loads((out / "results.json").read_text())
    assert saved["budget"] == {"steps": None, "seconds": 1.0}
    (summary,) = saved["runs"]
    assert summary["time_limited"] is True and summary["final_step"] == low
    assert (out / "1" / "seed_0" / "checkpoints" / f"step_{low}").is_dir()  # ended like a run
    assert display_rows([row])[0]["steps"] == str(low)
    assert "not bit-reproducible" in (out / "report.html").read_text()


def test_cli_bad_budget_is_one_line(base, tmp_path, capsys) -> None:
    from formerlab.cli import main

    out = tmp_path / "out"
    args = ["compare", str(base), "--sweep", "model.depth=1", "--budget", "10parsecs"]
    assert main([*args, "--out", str(out)]) == 2
    assert "--budget: invalid value '10parsecs'" in capsys.readouterr().err
    assert not out.exists()
