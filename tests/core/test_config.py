"""Configs: round trips, YAML/JSON, base: inheritance, overrides with coercion, every error path."""

from __future__ import annotations

import json

import pytest
import yaml

import formerlab as fl
from formerlab.config import apply_overrides
from formerlab.models import DecoderLMConfig, ModelConfig

RUN = {
    "model": {"kind": "decoder_lm", "dim": 32, "depth": 2, "num_heads": 2, "max_seq_len": 64},
    "task": {"kind": "copy", "seq_len": 33},
    "train": {"steps": 10, "batch_size": 4},
}


def test_run_config_round_trip_is_exact() -> None:
    run = fl.load_config(RUN)
    d = run.to_dict()
    assert fl.RunConfig.from_dict(d).to_dict() == d
    assert d["model"]["attention"] == {
        "kind": "softmax",
        "dropout": 0.0,
        "bias": True,
        "head_dim": None,
        "linear": None,
        "num_kv_heads": None,
    }
    assert fl.load_config(d) == run


def test_yaml_and_json_files_load_the_same(tmp_path) -> None:
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(RUN))
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    assert fl.load_config(tmp_path / "run.yaml") == fl.load_config(tmp_path / "run.json")


def test_overrides_are_typed_against_the_schema() -> None:
    run = fl.load_config(
        RUN,
        overrides=[
            "model.depth=3",
            "train.optimizer.lr=3e-4",  # YAML reads this as a string; the schema makes it a float
            "model.attention.num_kv_heads=1",
            "model.norm.kind=rmsnorm",
            "train.grad_clip=null",
        ],
    )
    assert run.model.depth == 3
    assert run.train.optimizer.lr == pytest.approx(3e-4) and isinstance(
        run.train.optimizer.lr, float
    )
    assert run.model.attention.num_kv_heads == 1
    assert run.model.norm.kind == "rmsnorm" and run.train.grad_clip is None


def test_changing_a_kind_resets_that_section() -> None:
    data = apply_overrides({"norm": {"kind": "layernorm", "bias": False}}, ["norm.kind=rmsnorm"])
    assert data == {"norm": {"kind": "rmsnorm"}}
    same = apply_overrides({"norm": {"kind": "layernorm", "bias": False}}, ["norm.kind=layernorm"])
    assert same == {"norm": {"kind": "layernorm", "bias": False}}


def test_base_inheritance_merges_and_replaces_changed_kinds(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(RUN))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: ../base.yaml\nmodel: {depth: 4, norm: {kind: rmsnorm}}\ntrain: {steps: 20}\n"
    )
    run = fl.load_config(tmp_path / "sub" / "child.yaml")
    assert (run.model.depth, run.model.dim, run.train.steps, run.train.batch_size) == (4, 32, 20, 4)
    assert run.model.norm.kind == "rmsnorm"


def test_base_cycle_is_an_error(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(fl.ConfigError, match="circular"):
        fl.load_config(tmp_path / "a.yaml")


def test_preset_names_resolve_in_run_files() -> None:
    run = fl.load_config({**RUN, "model": "gpt-tiny"}, overrides=["model.depth=1"])
    assert run.model.dim == 64 and run.model.depth == 1
    run = fl.load_config({**RUN, "model": {"preset": "gpt-tiny", "dim": 32}})
    assert run.model.dim == 32
    with pytest.raises(fl.ConfigError, match="unknown preset 'gpt-huge'; presets: .*gpt-small-cpu"):
        fl.load_config({**RUN, "model": "gpt-huge"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.dpth=2",
            r"model.dpth: unknown field for model kind 'decoder_lm'; valid fields: .*depth",
        ),
        (
            "model.attention.kind=nope",
            r"model.attention.kind: unknown attention kind 'nope'; registered: .*softmax",
        ),
        ("model.depth=two", r"model.depth: invalid value 'two'; allowed: int"),
        ("model.depth=1.5", r"model.depth: invalid value 1.5; allowed: int"),
        ("model.tie_embeddings=3", r"model.tie_embeddings: invalid value 3; allowed: bool"),
        (
            "model.norm_placement=middle",
            r"model.norm_placement: invalid value 'middle'; allowed: 'pre' \| 'post'",
        ),
        (
            "model.dim=33",
            r"model.dim: 33 is not divisible by num_heads=2; allowed: a multiple of 2",
        ),
        (
            "model.attention.num_kv_heads=3",
            r"model.attention.num_kv_heads: 3 does not divide num_heads=2",
        ),
        ("model.max_seq_len=16", r"model.max_seq_len: 16 is shorter than task.seq_len=33"),
        ("train.steps=0", r"train.steps: 0 must be >= 1"),
        (
            "train.schedule.warmup_steps=100",
            r"train.schedule.warmup_steps: 100 exceeds train.steps=10",
        ),
        (
            "model.ffn.activation=tanh",
            r"model.ffn.activation: invalid value 'tanh'; allowed: 'gelu'",
        ),
        ("model.depth", r"expected KEY=VALUE"),
    ],
)
def test_validation_errors_name_path_value_and_allowed(override: str, message: str) -> None:
    with pytest.raises(fl.ConfigError, match=message):
        fl.load_config(RUN, overrides=[override])


def test_missing_kind_lists_registered_names() -> None:
    with pytest.raises(
        fl.ConfigError, match=r"model.kind: missing; registered model kinds: decoder_lm"
    ):
        fl.load_config({**RUN, "model": {"dim": 32}})


def test_missing_capability_is_a_config_error() -> None:
    from dataclasses import dataclass

    from formerlab.layers.attention import Attention, AttentionConfig
    from formerlab.registry import ATTENTION

    @dataclass(kw_only=True)
    class BidirOnlyConfig(AttentionConfig):
        kind = "test_bidir_only"

    ATTENTION.register(BidirOnlyConfig)(type("BidirOnly", (Attention,), {}))
    try:
        with pytest.raises(fl.ConfigError, match="'test_bidir_only' lacks supports_causal"):
            DecoderLMConfig.from_dict({"attention": {"kind": "test_bidir_only"}}, "model")
        enc = ModelConfig.from_dict({"kind": "encoder", "attention": "test_bidir_only"})
        assert enc.attention.kind == "test_bidir_only"
    finally:
        ATTENTION.unregister("test_bidir_only")


def test_replace_validates() -> None:
    cfg = DecoderLMConfig()
    assert cfg.replace(depth=2).depth == 2 and cfg.depth == 4
    with pytest.raises(fl.ConfigError, match="num_heads"):
        cfg.replace(dim=30)
