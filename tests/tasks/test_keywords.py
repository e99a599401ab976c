"""The ``keywords`` task: one intact keyword (the label) among near-misses of every keyword."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from formerlab.errors import ConfigError
from formerlab.models import ModelConfig
from formerlab.registry import TASK
from formerlab.tasks.keywords import KeywordsConfig, draw_keywords


def task(seed: int = 3, **fields):
    return TASK.entry("keywords").impl(KeywordsConfig(**fields), seed=seed)


def matches(t, ids: torch.Tensor) -> torch.Tensor:
    """(B, windows, keywords, L) bool: does window w agree with keyword k at position i."""
    windows = ids.unfold(1, t.config.keyword_length, 1)
    return windows[:, :, None, :] == t.keywords[None, None]


def test_keywords_have_distinct_symbols_differ_twice_and_depend_on_data_seed_only() -> None:
    cfg = KeywordsConfig(num_keywords=6, keyword_length=5, num_symbols=8)
    words = draw_keywords(cfg)
    assert words.shape == (6, 5)
    assert all(len(set(w.tolist())) == 5 for w in words)
    assert all(int((a != b).sum()) >= 2 for a, b in itertools.combinations(words, 2))
    a = task(seed=1, num_keywords=6, keyword_length=5, num_symbols=8).keywords
    b = task(seed=2, num_keywords=6, keyword_length=5, num_symbols=8).keywords
    assert torch.equal(a, b) and torch.equal(a, words)
    other = draw_keywords(
        KeywordsConfig(num_keywords=6, keyword_length=5, num_symbols=8, data_seed=1)
    )
    assert not torch.equal(other, words)


@pytest.mark.parametrize("fields", [{}, {"num_keywords": 3, "keyword_length": 5, "strings": 6}])
def test_exactly_one_intact_keyword_the_label_and_the_rest_near_misses(fields) -> None:
    t = task(**fields)
    cfg = t.config
    batch = t.batch("train", 0, 512)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == (512, cfg.seq_len) and int(ids.min()) >= 0
    assert int(ids.max()) < t.vocab_size == cfg.num_symbols
    agree = matches(t, ids).sum(-1)  # (B, W, K)
    intact = (agree == cfg.keyword_length).sum(1)  # (B, K)
    assert torch.equal(intact, nn.functional.one_hot(labels, cfg.num_keywords))
    near = (agree == cfg.keyword_length - 1).sum((1, 2))
    assert bool((near >= cfg.strings - 1).all())  # filler may add more, never fewer
    assert float(near.float().mean()) < cfg.strings  # ... and rarely does


def test_labels_are_balanced_and_near_misses_do_not_depend_on_the_label() -> None:
    t = task()
    batch = t.batch("train", 1, 4000)
    ids, labels = batch["input_ids"], batch["labels"]
    assert 0.45 < float(labels.float().mean()) < 0.55
    near = (matches(t, ids).sum(-1) == t.config.keyword_length - 1).sum(1)  # (B, K)
    for k in range(2):
        by_label = [float(near[labels == y, k].float().mean()) for y in range(2)]
        assert abs(by_label[0] - by_label[1]) < 0.25  # of about 6.5 near-misses per keyword


@pytest.mark.parametrize(
    ("fields", "low", "high"), [({}, 0.67, 0.77), ({"strings": 6, "seq_len": 64}, 0.77, 0.87)]
)
def test_a_reader_of_five_positions_is_far_from_exact_as_the_docstring_says(
    fields, low, high
) -> None:
    """Counting matches of every 5 of the 9 keyword positions scores about 72 % (14 strings in 128
    tokens) or 82 % (6 in 64); the exact count of intact keywords scores 100 % (the reason one layer
    needs 8 exact reads)."""
    t = task(**fields)
    batch = t.batch("val", 0, 3000)
    agree, labels = matches(t, batch["input_ids"]), batch["labels"]
    exact = (agree.sum(-1) == 9).sum(1)
    assert torch.equal(exact.argmax(1), labels)
    # a window agreeing at m positions fully matches comb(m, 5) of the 5-position subsets
    per_window = torch.tensor([math.comb(m, 5) for m in range(10)])
    score = per_window[agree.sum(-1)].sum(1)  # (B, K)
    ties = score[:, 0] == score[:, 1]
    right = ((score.argmax(1) == labels) & ~ties).float().mean() + 0.5 * ties.float().mean()
    assert low < float(right) < high


def test_batches_are_pure_functions_of_split_and_index() -> None:
    t = task()
    a, b = t.batch("val", 2, 8), t.batch("val", 2, 8)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["input_ids"], t.batch("train", 2, 8)["input_ids"])
    assert not torch.equal(a["input_ids"], t.batch("val", 3, 8)["input_ids"])


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"keyword_length": 17}, "keyword_length"),
        ({"seq_len": 100}, "seq_len"),
        ({"num_keywords": 1}, "num_keywords"),
        ({"strings": 0}, "strings"),
    ],
)
def test_config_errors_name_the_field(fields, name) -> None:
    with pytest.raises(ConfigError, match=f"task.{name}"):
        KeywordsConfig.from_dict({"kind": "keywords", **fields}, "task")


def test_check_model_wants_an_encoder_with_one_class_per_keyword() -> None:
    t = task()
    good = {
        "kind": "encoder",
        "vocab_size": 16,
        "max_seq_len": 128,
        "dim": 16,
        "num_heads": 2,
        "head": {"kind": "classifier", "num_classes": 2},
    }
    t.check_model(ModelConfig.from_dict(good, "model"))
    bad = [
        {**good, "head": {"kind": "classifier", "num_classes": 3}},
        {**good, "vocab_size": 8},
        {**good, "max_seq_len": 64},
    ]
    for cfg in bad:
        with pytest.raises(ConfigError, match="model"):
            t.check_model(ModelConfig.from_dict(cfg, "model"))


class _Constant(nn.Module):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0]]).expand(len(ids), 2)


def test_evaluate_counts_every_example_of_the_fixed_batches() -> None:
    t = task(eval_batches=3)
    labels = torch.cat([t.batch("val", i, 10)["labels"] for i in range(3)])
    found = t.evaluate(_Constant(), 10)
    share = float((labels == 0).float().mean())
    assert found["accuracy"] == pytest.approx(share)
    assert found["majority_baseline"] == pytest.approx(max(share, 1 - share))
    assert found["val_loss"] > 0
