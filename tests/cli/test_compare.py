"""``formerlab compare``: planning, validation before compute, and a real two-variant run."""

from __future__ import annotations

import json

import pytest
import yaml

from formerlab.compare import compare, plan, summarize
from formerlab.errors import ConfigError

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
        }
        for acc, mem in ((0.5, 100.0), (0.7, 120.0))
    ]
    (row,) = summarize(results)
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
    saved = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == ["layernorm", "rmsnorm"]
    html = (out / "report.html").read_text()
    assert "Learning curves" in html and html.count("data:image/png;base64,") == 2
    assert (out / "rmsnorm" / "seed_0" / "checkpoints" / "step_4").is_dir()
