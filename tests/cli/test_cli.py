"""The command line, end to end in-process: help, info, train → eval → generate, error lines."""

from __future__ import annotations

import json

import pytest
import yaml

from formerlab.cli import main

COMMANDS = [
    ["train"],
    ["eval"],
    ["generate"],
    ["info"],
    ["claims", "list"],
    ["claims", "run"],
    ["claims", "report"],
    ["bench", "speed"],
    ["bench", "attention"],
    ["demo"],
    ["compare"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command, capsys) -> None:
    assert main([*command, "--help"]) == 0
    assert "Example: formerlab" in capsys.readouterr().out


def test_info_lists_groups_kinds_fields_and_presets(capsys) -> None:
    assert main(["info", "--json"]) == 0
    groups = {row["group"]: row["registered"] for row in json.loads(capsys.readouterr().out)}
    assert "softmax" in groups["attention"] and "decoder_lm" in groups["model"]
    assert main(["info", "attention", "softmax", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["capabilities"]["supports_causal"] is True
    assert main(["info", "presets"]) == 0
    assert "gpt-small-cpu" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(capsys) -> None:
    assert main(["info", "norm", "batchnorm"]) == 2
    err = capsys.readouterr().err
    assert "unknown norm kind 'batchnorm'; registered: crmsnorm, layernorm, none, rmsnorm" in err
    assert "Traceback" not in err
    with pytest.raises(Exception, match="batchnorm"):
        main(["--debug", "info", "norm", "batchnorm"])


def test_claims_report_writes_the_page_and_names_bad_results(tmp_path, capsys) -> None:
    assert main(["claims", "report", "--results", str(tmp_path)]) == 0
    assert "report:" in capsys.readouterr().out
    assert 'id="lra"' in (tmp_path / "report.html").read_text()
    (tmp_path / "lra.json").write_text("[]")
    assert (
        main(["claims", "report", "--results", str(tmp_path), "--out", str(tmp_path / "x.html")])
        == 2
    )
    assert "lra.json: lacks key, status, ours, seeds, env" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_claims_run_all_means_every_registered_check(monkeypatch, capsys) -> None:
    import formerlab.claims
    from formerlab.registry import CLAIM

    seen = []

    def fake_run(keys, budget, out, log=None):
        seen.append((list(keys), budget))
        return [{"key": k, "status": "pass", "ours": 0.0, "paper_value": "", "passed": True,
                 "control_passed": False, "seconds": 0.0} for k in keys]  # fmt: skip

    monkeypatch.setattr(formerlab.claims, "run_claims", fake_run)
    assert main(["claims", "run", "all", "--budget", "full"]) == 0
    assert seen == [(CLAIM.names(), "full")] and len(seen[0][0]) >= 15
    assert main(["claims", "run", "lra"]) == 0 and seen[-1] == (["lra"], "quick")


@pytest.fixture
def text_run(tmp_path):
    corpus = tmp_path / "data"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"f{i}.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    run = {
        "model": {"kind": "decoder_lm", "dim": 32, "depth": 1, "num_heads": 2, "max_seq_len": 64},
        "task": {
            "kind": "text_lm",
            "files": str(corpus / "*.txt"),
            "seq_len": 32,
            "eval_batches": 2,
        },
        "train": {
            "steps": 6,
            "batch_size": 4,
            "log_every": 2,
            "eval_every": 3,
            "checkpoint_every": 3,
            "schedule": {"kind": "constant"},
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def test_train_eval_generate(text_run, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["train", str(text_run), "--out", str(out), "--set", "train.steps=6"]) == 0
    assert (out / "checkpoints" / "step_6" / "MANIFEST.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["step"] == 6 and metrics["val_loss"] > 0 and "bits_per_byte" in metrics
    assert main(["generate", str(out), "--prompt", "the quick", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("the quick")


def test_generate_with_compile_gives_the_same_text(text_run, tmp_path, capsys, monkeypatch) -> None:
    from formerlab.models import generation

    monkeypatch.setattr(generation.torch, "compile", lambda fn, **_: fn)  # the static path, eager
    out = tmp_path / "out"
    assert main(["train", str(text_run), "--out", str(out), "--set", "train.steps=2"]) == 0
    texts = []
    for extra in ([], ["--compile"]):
        capsys.readouterr()
        args = ["generate", str(out), "--prompt", "the", "--max-new-tokens", "12"]
        assert main([*args, "--temperature", "0", *extra]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("the")


def test_train_refuses_bad_overrides_before_compute(text_run, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    assert main(["train", str(text_run), "--out", str(out), "--set", "model.depth=two"]) == 2
    assert "model.depth: invalid value 'two'; allowed: int" in capsys.readouterr().err
    assert not out.exists()


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["eval", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    "model",
    [
        {"kind": "looped_lm", "depth": 2, "loops": 2},
        {"kind": "fit", "mode": "decoder_lm", "depth": 1, "group_size": 8},
    ],
)
def test_other_causal_model_kinds_train_and_generate(text_run, tmp_path, capsys, model) -> None:
    """Kinds with a decoder_lm interface train on LM tasks and generate through the CLI."""
    out = tmp_path / "out"
    sets = [f"model.{k}={v}" for k, v in model.items()]
    args = ["train", str(text_run), "--out", str(out), "--set", "train.steps=2"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "the quick", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("the quick")
