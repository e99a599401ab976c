"""The ``far_match`` task: two marked tokens in different groups, balanced labels, pure batches."""

from __future__ import annotations

import pytest
import torch

from formerlab.errors import ConfigError
from formerlab.models import ModelConfig
from formerlab.registry import TASK
from formerlab.tasks.far_match import FarMatchConfig


def task(**fields):
    return TASK.entry("far_match").impl(FarMatchConfig(**fields), seed=3)


@pytest.mark.parametrize("filler", [1, 5])
def test_each_row_has_two_marked_tokens_in_different_groups_and_the_right_label(filler) -> None:
    t = task(seq_len=48, group_size=8, num_symbols=6, filler_symbols=filler)
    batch = t.batch("train", 0, 256)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == (256, 48) and t.vocab_size == filler + 6
    assert int(ids.min()) >= 0 and int(ids.max()) < t.vocab_size
    marked = ids >= filler
    assert bool((marked.sum(1) == 2).all())
    pos = marked.nonzero()[:, 1].view(-1, 2)
    assert bool((pos[:, 0] // 8 != pos[:, 1] // 8).all())
    values = ids.gather(1, pos)
    assert torch.equal(labels, (values[:, 0] == values[:, 1]).long())
    assert 0.4 < labels.float().mean() < 0.6


def test_each_marked_symbol_alone_says_nothing_about_the_label() -> None:
    t = task(seq_len=32, group_size=8, num_symbols=2)
    batch = t.batch("train", 1, 4000)
    ids, labels = batch["input_ids"], batch["labels"]
    first = ids.gather(1, (ids >= 1).nonzero()[:, 1].view(-1, 2))[:, 0]
    for value in (1, 2):
        rate = labels[first == value].float().mean()
        assert abs(float(rate) - 0.5) < 0.04


def test_batches_are_pure_functions_of_split_and_index() -> None:
    t = task()
    a, b = t.batch("val", 2, 8), t.batch("val", 2, 8)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["input_ids"], t.batch("train", 2, 8)["input_ids"])


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"seq_len": 40, "group_size": 16}, "seq_len"),
        ({"seq_len": 16, "group_size": 16}, "seq_len"),
        ({"num_symbols": 1}, "num_symbols"),
        ({"filler_symbols": 0}, "filler_symbols"),
    ],
)
def test_config_errors_name_the_field(fields, name) -> None:
    with pytest.raises(ConfigError, match=f"task.{name}"):
        FarMatchConfig.from_dict({"kind": "far_match", **fields}, "task")


def test_check_model_wants_a_two_class_encoder() -> None:
    t = task()
    good = {"kind": "fit", "vocab_size": 9, "max_seq_len": 128, "dim": 16, "num_heads": 2}
    t.check_model(ModelConfig.from_dict(good, "model"))
    bad = [
        {**good, "mode": "decoder_lm"},
        {**good, "head": {"kind": "classifier", "num_classes": 3}},
        {**good, "kind": "decoder_lm"},
    ]
    for cfg in bad:
        with pytest.raises(ConfigError, match="model"):
            t.check_model(ModelConfig.from_dict(cfg, "model"))


def test_a_sum_of_per_group_terms_beats_chance_as_documented() -> None:
    """The additive rule "both marked symbols in S" scores (s/K + 1 - s(s-1)/(K(K-1))) / 2."""
    K, s = 8, 4
    batch = task(seq_len=32, group_size=8, num_symbols=K).batch("train", 2, 20000)
    ids, labels = batch["input_ids"], batch["labels"]
    marks = ids.gather(1, (ids >= 1).nonzero()[:, 1].view(-1, 2)) - 1
    predicted = ((marks < s).sum(1) == 2).long()
    accuracy = float((predicted == labels).float().mean())
    expected = (s / K + 1 - s * (s - 1) / (K * (K - 1))) / 2
    assert abs(accuracy - expected) < 0.015 and expected > 0.6
