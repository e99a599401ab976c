"""``formerlab convert``: a saved model in, a converted, loadable model directory out."""

from __future__ import annotations

import pytest
import torch
import yaml

import formerlab as fl
from formerlab.cli import main

TINY = {"kind": "decoder_lm", "vocab_size": 256, "dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture
def saved(tmp_path):
    """A Pre-LN byte LM with non-trivial LayerNorm affines, saved with save_pretrained."""
    model = fl.build_model({**TINY, "max_seq_len": 64})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return fl.save_pretrained(model, tmp_path / "src")


def greedy(directory, capsys) -> str:
    args = ["generate", str(directory), "--prompt", "def f(x):", "--temperature", "0"]
    assert main([*args, "--max-new-tokens", "12"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("kind", ["pre_ln_to_rmsnorm", "pre_ln_to_crmsnorm"])
def test_convert_writes_a_loadable_directory_that_generates_the_same_tokens(
    saved, tmp_path, capsys, kind
) -> None:
    out = tmp_path / "converted"
    assert main(["convert", str(saved), str(out), "--kind", kind]) == 0
    assert "parameters" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "model.safetensors",
        "tokenizer.yaml",
    ]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["norm"]["kind"] == kind.removeprefix("pre_ln_to_")
    assert config["tie_embeddings"] is False
    original, converted = fl.from_pretrained(saved).double(), fl.from_pretrained(out).double()
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert (original(ids) - converted(ids)).abs().max() < 1e-5  # float32 weights on disk
    assert greedy(out, capsys) == greedy(saved, capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    ("spec", "norm"),
    [('{"kind": "pre_ln_to_crmsnorm"}', "crmsnorm"), ("pre_ln_to_rmsnorm", "rmsnorm")],
)
def test_transform_option_takes_json_or_a_bare_kind(saved, tmp_path, spec, norm) -> None:
    out = tmp_path / "converted"
    assert main(["convert", str(saved), str(out), "--transform", spec]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["norm"]["kind"] == norm


def test_convert_a_run_directory(tmp_path, capsys) -> None:
    run = {
        "model": {**TINY, "max_seq_len": 32},
        "task": {"kind": "code_lm", "seq_len": 32, "eval_batches": 1, "max_files": 20},
        "train": {"steps": 1, "batch_size": 2, "log_every": 1, "eval_every": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]) == 0
    assert (
        main(
            ["convert", str(tmp_path / "run"), str(tmp_path / "rms"), "--kind", "pre_ln_to_rmsnorm"]
        )
        == 0
    )
    capsys.readouterr()
    assert greedy(tmp_path / "rms", capsys) == greedy(tmp_path / "run", capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --kind KIND or --transform SPEC"),
        (["--kind", "a", "--transform", "b"], "give exactly one of --kind"),
        (["--kind", "nope"], "unknown transform kind 'nope'; registered:"),
        (["--transform", "[1, 2]"], "--transform: '[1, 2]'; allowed: a mapping"),
        (["--kind", "pre_ln_to_rmsnorm", "--set", "eps=1"], "transform.eps: unknown field"),
    ],
)
def test_bad_transform_arguments_fail_before_any_work(saved, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["convert", str(saved), str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_refused_conversion_and_existing_output_leave_nothing_behind(tmp_path, capsys) -> None:
    post = fl.save_pretrained(fl.build_model({**TINY, "norm_placement": "post"}), tmp_path / "p")
    out = tmp_path / "out"
    assert main(["convert", str(post), str(out), "--kind", "pre_ln_to_rmsnorm"]) == 2
    assert "norm_placement: 'post' cannot be converted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    out.mkdir()
    assert main(["convert", str(post), str(out), "--kind", "pre_ln_to_rmsnorm"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_convert_help_has_an_example(capsys) -> None:
    assert main(["convert", "--help"]) == 0
    assert "Example: formerlab convert" in capsys.readouterr().out
