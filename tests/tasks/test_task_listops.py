"""listops: the evaluator on hand-written expressions, the LRA grammar and length filter, distinct
splits, determinism, config errors, and a tiny encoder that learns more than the majority class."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from formerlab.errors import ConfigError, DataError
from formerlab.registry import TASK
from formerlab.tasks.listops import (
    LRA_LISTOPS,
    SYMBOLS,
    ListOpsConfig,
    ListOpsTask,
    apply_operator,
    decode_listops,
    encode_listops,
    evaluate_listops,
    lra_listops_config,
    max_expression_length,
    nesting_depths,
    sample_expression,
)
from formerlab.train import train

SMALL = {
    "kind": "listops",
    "seq_len": 60,
    "min_length": 10,
    "max_length": 60,
    "max_depth": 4,
    "max_args": 4,
    "train_size": 300,
    "val_size": 60,
    "test_size": 40,
    "eval_batches": 2,
}


def make(**fields: object) -> ListOpsTask:
    return TASK.build({**SMALL, **fields}, seed=0)


# -- the evaluator ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]", 5),
        ("[SM 4 [MAX 2 9 ] ]", 3),
        ("[SM 9 9 9 ]", 7),
        ("[MED 1 2 3 4 ]", 2),  # mean of the middle pair 2.5, rounded down
        ("[MED 9 8 ]", 8),
        ("[MED 3 [MIN 7 6 ] 1 ]", 3),
        ("[MIN [SM 9 9 ] 5 ]", 5),
        ("[MAX [MIN 1 2 ] [MIN 0 8 ] ]", 1),
        ("[MIN [MAX [SM 5 5 ] 0 ] 4 ]", 0),
        ("7", 7),
        ("( ( ( [MAX 2 ) 9 ) ] )", 9),  # LRA's TSV form with binary-tree parentheses
    ],
)
def test_evaluator_on_hand_written_expressions(text: str, value: int) -> None:
    assert evaluate_listops(text) == value
    assert evaluate_listops(text.split()) == value


@pytest.mark.parametrize("text", ["[MAX 1 2", "1 ]", "[FOO 1 ]", "1 2", "", "[MIN ]", "[SM 12 ]"])
def test_malformed_expressions_are_data_errors(text: str) -> None:
    with pytest.raises(DataError, match="listops"):
        evaluate_listops(text)


def test_median_matches_numpy_truncated() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        args = rng.integers(0, 10, size=int(rng.integers(1, 12))).tolist()
        assert apply_operator("MED", args) == int(np.median(args))


def test_encode_decode_round_trip() -> None:
    text = "[SM 1 [MED 4 5 6 ] [MIN 0 9 ] [MAX 3 3 ] ]"
    ids = encode_listops(text)
    assert ids.dtype == np.uint8 and ids.max() < len(SYMBOLS)
    assert decode_listops(ids) == text
    with pytest.raises(DataError, match="invalid token"):
        encode_listops("[MAX 1 x ]")


# -- the grammar -----------------------------------------------------------------------------------


def test_early_abandon_keeps_the_distribution() -> None:
    """A sample abandoned at max_length is exactly one that would have been too long."""
    for seed in range(300):
        capped = sample_expression(random.Random(seed), 5, 4, 30)
        full = sample_expression(random.Random(seed), 5, 4, 10**9)
        assert full is not None
        if capped is None:
            assert len(full[0]) >= 30
        else:
            assert capped == full


def test_sampled_values_agree_with_the_evaluator() -> None:
    rng = random.Random(1)
    for _ in range(200):
        ids, value = sample_expression(rng, 5, 5, 10**9)
        assert evaluate_listops(decode_listops(ids)) == value


def test_max_expression_length_is_reachable() -> None:
    assert max_expression_length(2, 3) == len(encode_listops("[MAX 1 2 3 ]"))
    assert max_expression_length(3, 2) == len(encode_listops("[MAX [MIN 1 2 ] [SM 3 4 ] ]"))
    assert max_expression_length(10, 10) > 2000


def test_dataset_respects_grammar_lengths_and_labels() -> None:
    task = make()
    pool = task.pool
    lengths = pool.lengths
    assert lengths.min() > 10 and lengths.max() < 60
    assert nesting_depths(pool).max() <= 3  # operators live at depths 1..max_depth-1
    for i in range(len(pool)):
        assert evaluate_listops(decode_listops(pool.sequence(i))) == pool.labels[i]
    assert task.text("val", 0) == decode_listops(task.splits["val"].sequence(0))


def test_batches_put_cls_first_then_the_expression() -> None:
    task = make()
    batch = task.batch("train", 0, 5)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (5, 60) and task.vocab_size == 17 and int(ids.max()) < 17
    assert torch.all(ids[:, 0] == 1)
    for row, keep in zip(ids, mask, strict=True):
        text = decode_listops((row[keep][1:] - 2).numpy())
        assert evaluate_listops(text) in range(10)


def test_splits_are_distinct_expressions() -> None:
    task = make()
    keys = {
        s: [task.splits[s].sequence(i).tobytes() for i in range(len(task.splits[s]))]
        for s in ("train", "val", "test")
    }
    every = [k for split in keys.values() for k in split]
    assert len(every) == len(set(every)) == 400


def test_deterministic_by_data_seed_not_by_training_seed() -> None:
    a = ListOpsTask(ListOpsConfig.from_dict({**SMALL, "cache": False}), seed=0)
    b = ListOpsTask(ListOpsConfig.from_dict({**SMALL, "cache": False}), seed=3)
    c = ListOpsTask(ListOpsConfig.from_dict({**SMALL, "cache": False, "data_seed": 1}), seed=0)
    assert a.pool.sha256() == b.pool.sha256() != c.pool.sha256()


def test_cache_hit_without_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    first = make()

    def fail(*args: object) -> None:
        raise AssertionError("generated again")

    monkeypatch.setattr(ListOpsTask, "generate", fail)
    again = make()
    assert again.cache_hit and again.pool.sha256() == first.pool.sha256()


def test_majority_baseline_is_reported() -> None:
    task = make(train_size=2000, val_size=400, test_size=100)
    info = task.data_info()
    counts = np.array(info["splits"]["train"]["class_counts"])
    assert counts.sum() == 2000 and (counts > 0).all()
    assert info["majority_class"] == int(counts.argmax())
    val = task.splits["val"].labels
    assert info["splits"]["val"]["majority_baseline"] == pytest.approx(
        np.mean(val == counts.argmax())
    )
    assert 0.1 < info["splits"]["val"]["majority_baseline"] < 0.25
    assert info["max_nesting_depth"] == 3 and info["grammar"]["max_args"] == 4


def test_too_few_distinct_expressions_is_a_data_error() -> None:
    # depth 2, 2 arguments: only 4 * 10 * 10 = 400 distinct expressions of 4 tokens exist
    with pytest.raises(DataError, match="only 400 of 500 distinct expressions"):
        make(
            min_length=3,
            max_length=5,
            max_depth=2,
            max_args=2,
            train_size=490,
            val_size=5,
            test_size=5,
        )


# -- configs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"seq_len": 50}, r"task.seq_len: invalid value 50; allowed: >= 60"),
        ({"max_length": 11}, r"task.max_length: invalid value 11; allowed: >= 12"),
        ({"max_args": 1}, r"task.max_args: invalid value 1; allowed: >= 2"),
        ({"max_depth": 1}, r"task.max_depth: invalid value 1; allowed: >= 2"),
        ({"min_length": -1}, r"task.min_length: invalid value -1; allowed: >= 0"),
        ({"max_depth": 2, "min_length": 40}, r"task.min_length: invalid value 40; .*has 6 tokens"),
    ],
)
def test_config_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ListOpsConfig.from_dict({**SMALL, **fields}, "task")


def test_lra_preset_is_the_papers_configuration() -> None:
    cfg = lra_listops_config()
    assert (cfg.min_length, cfg.max_length, cfg.max_depth, cfg.max_args) == (500, 2000, 10, 10)
    assert (cfg.train_size, cfg.val_size, cfg.test_size, cfg.seq_len) == (
        96_000,
        2_000,
        2_000,
        2000,
    )
    assert cfg.to_dict() == ListOpsConfig.from_dict(LRA_LISTOPS).to_dict()
    assert lra_listops_config(train_size=10).train_size == 10


# -- learning ---------------------------------------------------------------------------------------


def test_a_tiny_encoder_beats_the_majority_baseline(tmp_path: Path) -> None:
    run = {
        "model": {
            "kind": "encoder",
            "vocab_size": 17,
            "dim": 64,
            "depth": 2,
            "num_heads": 4,
            "max_seq_len": 40,
            "head": {"kind": "classifier", "num_classes": 10, "pooling": "cls"},
        },
        "task": {
            "kind": "listops",
            "seq_len": 40,
            "min_length": 10,
            "max_length": 40,
            "max_depth": 3,
            "max_args": 4,
            "train_size": 3000,
            "val_size": 500,
            "test_size": 100,
            "eval_batches": 8,
        },
        "train": {
            "steps": 120,
            "batch_size": 32,
            "optimizer": {"kind": "adamw", "lr": 2.0e-3},
            "schedule": {"kind": "constant", "warmup_steps": 10},
            "eval_every": 0,
            "checkpoint_every": 0,
            "threads": 1,
        },
    }
    val = train(run, tmp_path / "run", progress=False)["val"]
    assert val["accuracy"] > val["majority_baseline"] + 0.05, val
