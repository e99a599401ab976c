"""Registry: listing, describing, duplicates, unknown names."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from torch import nn

import formerlab as fl
from formerlab.layers.norm import NormConfig
from formerlab.registry import GROUPS, NORM


def test_every_group_is_listed_and_baselines_are_registered() -> None:
    assert set(GROUPS) >= {
        "attention",
        "norm",
        "ffn",
        "linear",
        "position",
        "embedding",
        "model",
        "head",
        "task",
        "optimizer",
        "schedule",
        "tokenizer",
        "claim",
        "transform",
    }
    assert "softmax" in fl.list_registered("attention")
    assert fl.list_registered("norm") == sorted(fl.list_registered("norm"))
    assert {"learned", "sinusoidal", "rope", "none"} <= set(fl.list_registered("position"))
    assert {"decoder_lm", "encoder", "encoder_decoder"} <= set(fl.list_registered("model"))
    assert {"classifier", "token_classifier", "mlm", "none"} <= set(fl.list_registered("head"))


def test_describe_reports_paper_fields_and_capabilities() -> None:
    info = fl.describe("attention", "softmax")
    assert "1706.03762" in info["paper"]
    fields = {f["name"]: f for f in info["fields"]}
    assert fields["num_kv_heads"]["default"] is None and fields["num_kv_heads"]["doc"]
    assert info["capabilities"]["supports_kv_cache"] is True


def test_duplicates_are_rejected() -> None:
    @dataclass(kw_only=True)
    class Dup(NormConfig):
        kind = "layernorm"

    with pytest.raises(fl.FormerlabError, match="already registered"):
        NORM.register(Dup)(nn.Identity)


def test_unknown_group_and_name_are_config_errors() -> None:
    with pytest.raises(fl.ConfigError, match="unknown group 'nrom'; groups: attention"):
        fl.list_registered("nrom")
    with pytest.raises(
        fl.ConfigError,
        match="unknown norm kind 'batchnorm'; registered: crmsnorm, layernorm, none, rmsnorm",
    ):
        fl.describe("norm", "batchnorm")
