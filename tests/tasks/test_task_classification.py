"""classification base: padded batches, epoch permutations, fixed val order, the on-disk cache,
loss/metrics/evaluation, model checks, and the LRA run files training end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import formerlab as fl
from formerlab.errors import ConfigError, DataError, InputError
from formerlab.tasks.classification import (
    CLS_ID,
    FIRST_SYMBOL_ID,
    PAD_ID,
    ClassificationTask,
    ClassificationTaskConfig,
    Examples,
)
from formerlab.train import train

REPO = Path(__file__).resolve().parents[2]


@dataclass(kw_only=True)
class ToyConfig(ClassificationTaskConfig):
    kind: ClassVar[str] = "toy_classification"
    max_len: int = 6


class ToyTask(ClassificationTask):
    """Distinct random strings over 4 symbols; the class is (number of symbol 0) mod 3."""

    num_classes = 3
    num_symbols = 4
    generated = 0

    def generate(self, total: int, rng: np.random.Generator) -> Examples:
        type(self).generated += 1
        seen: dict[bytes, np.ndarray] = {}
        while len(seen) < total:
            seq = rng.integers(0, 4, size=int(rng.integers(1, self.config.max_len + 1)))
            seen.setdefault(seq.astype(np.uint8).tobytes(), seq)
        seqs = list(seen.values())
        return Examples.from_sequences(seqs, [int((s == 0).sum()) % 3 for s in seqs])


def toy(seed: int = 0, **fields: object) -> ToyTask:
    cfg = {"seq_len": 8, "train_size": 60, "val_size": 20, "test_size": 10, "eval_batches": 2}
    return ToyTask(ToyConfig.from_dict({**cfg, **fields}), seed=seed)


def row_key(ids: torch.Tensor) -> bytes:
    return ids.numpy().astype(np.int64).tobytes()


# -- batches ---------------------------------------------------------------------------------------


def test_batch_layout_cls_symbols_padding_mask_labels() -> None:
    task = toy()
    batch = task.batch("val", 0, 20)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == (20, 8) and labels.shape == (20,)
    assert ids.dtype == labels.dtype == torch.long and mask.dtype == torch.bool
    val = task.splits["val"]
    for i in range(20):
        seq = val.sequence(i).astype(np.int64)
        n = len(seq)
        assert ids[i, 0] == CLS_ID
        assert ids[i, 1 : n + 1].tolist() == (seq + FIRST_SYMBOL_ID).tolist()
        assert torch.all(ids[i, n + 1 :] == PAD_ID)
        assert mask[i].tolist() == [True] * (n + 1) + [False] * (7 - n)
        assert int(labels[i]) == int((seq == 0).sum()) % 3 == int(val.labels[i])


def test_val_batches_are_the_split_in_order_and_wrap() -> None:
    task = toy()
    first = task.batch("val", 0, 8)["input_ids"]
    third = task.batch("val", 2, 8)["input_ids"]  # positions 16..23 -> 16..19, 0..3
    assert torch.equal(third[4:], first[:4])
    assert torch.equal(task.batch("val", 0, 20)["input_ids"][16:], third[:4])
    test_rows = task.batch("test", 0, 10)["labels"]
    assert test_rows.tolist() == task.splits["test"].labels.tolist()


def test_train_walks_one_permutation_per_epoch() -> None:
    task = toy()
    train = task.collate("train", np.arange(60))["input_ids"]
    index = {row_key(r): i for i, r in enumerate(train)}
    assert len(index) == 60
    rows = [index[row_key(r)] for b in range(6) for r in task.batch("train", b, 10)["input_ids"]]
    assert sorted(rows) == list(range(60))  # epoch 0: every example exactly once
    assert rows != list(range(60))  # ... in a shuffled order
    straddle = [index[row_key(r)] for r in task.batch("train", 5, 14)["input_ids"]]  # 70..83
    epoch1 = [
        index[row_key(r)] for b in range(6, 12) for r in task.batch("train", b, 10)["input_ids"]
    ]
    assert straddle == epoch1[10:24] and sorted(epoch1) == list(range(60))
    assert epoch1 != rows  # a new permutation


def test_batches_are_pure_functions_of_seed_split_index() -> None:
    a, b = toy(), toy()
    assert torch.equal(a.batch("train", 3, 7)["input_ids"], b.batch("train", 3, 7)["input_ids"])
    b.batch("train", 40, 7)  # visiting other epochs changes nothing
    assert torch.equal(a.batch("train", 3, 7)["input_ids"], b.batch("train", 3, 7)["input_ids"])
    other = toy(seed=1)
    assert not torch.equal(
        a.batch("train", 0, 30)["input_ids"], other.batch("train", 0, 30)["input_ids"]
    )
    assert a.pool.sha256() == other.pool.sha256()  # the training seed only orders the data


def test_splits_are_disjoint_and_sized() -> None:
    task = toy()
    keys = {
        s: {task.splits[s].sequence(i).tobytes() for i in range(len(task.splits[s]))}
        for s in task.splits
    }
    assert [len(keys[s]) for s in ("train", "val", "test")] == [60, 20, 10]
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]


@pytest.mark.parametrize(
    ("split", "index", "batch_size", "field"),
    [
        ("dev", 0, 2, "split"),
        ("val", -1, 2, "index"),
        ("train", 0, 0, "batch_size"),
        ("val", 0, True, "batch_size"),
    ],
)
def test_bad_batch_requests_are_input_errors(
    split: str, index: int, batch_size: int, field: str
) -> None:
    with pytest.raises(InputError, match=f"^{field}: invalid value"):
        toy().batch(split, index, batch_size)


def test_seq_len_shorter_than_an_example_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"task.seq_len: 5 is shorter .*allowed: >= 7"):
        toy(seq_len=5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"train_size": 0}, "task.train_size: invalid value 0; allowed: >= 1"),
        ({"test_size": -2}, "task.test_size: invalid value -2"),
        ({"data_seed": -1}, "task.data_seed: invalid value -1; allowed: >= 0"),
    ],
)
def test_config_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ToyConfig.from_dict(fields, "task")


# -- cache -----------------------------------------------------------------------------------------


def test_cache_hit_gives_identical_data_without_generating(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = toy()
    assert not first.cache_hit and first.cache_path().parent == cache_dir / "toy_classification"
    assert [p.name for p in first.cache_path().parent.iterdir()] == [first.cache_path().name]

    def fail(*args: object) -> None:
        raise AssertionError("generated again")

    monkeypatch.setattr(ToyTask, "generate", fail)
    again = toy(eval_batches=5, seq_len=9)  # neither changes the data
    assert again.cache_hit and again.cache_path() == first.cache_path()
    assert again.pool.sha256() == first.pool.sha256()
    assert torch.equal(again.batch("train", 4, 9)["labels"], first.batch("train", 4, 9)["labels"])
    assert again.data_info()["cache"] == {"path": str(first.cache_path()), "hit": True}


def test_cache_key_follows_the_data_fields() -> None:
    base = toy()
    assert toy(data_seed=1).cache_path() != base.cache_path()
    assert toy(val_size=21).cache_path() != base.cache_path()
    assert toy(data_seed=1).pool.sha256() != base.pool.sha256()


def test_corrupt_cache_is_regenerated_with_a_warning() -> None:
    first = toy()
    path = first.cache_path()
    path.write_bytes(path.read_bytes()[:50])
    with pytest.warns(UserWarning, match="ignoring dataset cache"):
        again = toy()
    assert not again.cache_hit and again.pool.sha256() == first.pool.sha256()
    assert toy().cache_hit  # rewritten whole


def test_cache_false_writes_nothing(cache_dir: Path) -> None:
    task = toy(cache=False)
    assert not cache_dir.exists()
    assert task.data_info()["cache"]["path"] is None


def test_unwritable_cache_warns_and_still_works(cache_dir: Path) -> None:
    cache_dir.write_text("a file where the folder should be")
    with pytest.warns(UserWarning, match="cannot cache the dataset"):
        task = toy()
    assert len(task.splits["train"]) == 60


# -- loss, metrics, evaluation -----------------------------------------------------------------------


class Counter(nn.Module):
    """Answers (count of symbol 0) mod 3 from the tokens, optionally shifted (a wrong model)."""

    def __init__(self, shift: int = 0) -> None:
        super().__init__()
        self.shift = shift
        self.masks: list[object] = []

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.masks.append(attention_mask)
        answer = ((input_ids == FIRST_SYMBOL_ID).sum(1) + self.shift) % 3
        return nn.functional.one_hot(answer, 3).float() * 20.0


class Constant(nn.Module):
    def __init__(self, cls: int, num_classes: int = 3) -> None:
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, input_ids: torch.Tensor, attention_mask: object = None) -> torch.Tensor:
        out = torch.zeros(len(input_ids), self.num_classes)
        out[:, self.cls] = 1.0
        return out


def test_oracle_is_perfect_wrong_model_fails_constant_model_is_the_baseline() -> None:
    task = toy(eval_batches=10)
    perfect = task.evaluate(Counter(), batch_size=8)
    assert perfect["accuracy"] == 1.0 and perfect["val_loss"] < 1e-6
    assert task.evaluate(Counter(shift=1), batch_size=8)["accuracy"] == 0.0
    majority = task.evaluate(Constant(task.majority_class), batch_size=8)
    assert majority["accuracy"] == pytest.approx(task.majority_baseline("val"))
    assert majority["majority_baseline"] == pytest.approx(task.majority_baseline("val"))
    counts = np.bincount(task.splits["train"].labels, minlength=3)
    assert counts[task.majority_class] == counts.max()


def test_evaluate_counts_each_example_once() -> None:
    task = toy(eval_batches=3)  # 3 batches of 8 -> the first 20 examples, not 24 with repeats
    labels = task.splits["val"].labels
    for cls in range(3):
        got = task.evaluate(Constant(cls), batch_size=8)["accuracy"]
        assert got == pytest.approx(np.mean(labels == cls))
    first16 = task.evaluate(Constant(0), batch_size=4)  # eval_batches 3 * 4 = 12 examples
    assert first16["accuracy"] == pytest.approx(np.mean(labels[:12] == 0))
    test = task.evaluate(Constant(0), batch_size=8, split="test")
    assert "test_loss" in test and test["accuracy"] == pytest.approx(
        np.mean(task.splits["test"].labels == 0)
    )


def test_loss_is_cross_entropy_over_the_batch() -> None:
    task = toy()
    batch = task.batch("train", 0, 16)
    torch.manual_seed(1)
    scores = torch.randn(16, 3)

    class Fixed(nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: object = None) -> torch.Tensor:
            return scores

    loss, count = task.loss(Fixed(), batch)
    assert count == 16
    assert torch.allclose(loss, nn.functional.cross_entropy(scores, batch["labels"]))
    metrics = task.metrics(Fixed(), batch)
    assert metrics["accuracy"] == pytest.approx(
        float((scores.argmax(1) == batch["labels"]).float().mean())
    )


def test_wrong_output_shape_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"needs \(batch, num_classes\) = \(4, 3\)"):
        toy().loss(Constant(0, num_classes=5), toy().batch("val", 0, 4))


def test_full_batches_pass_no_mask_padded_ones_pass_it() -> None:
    task = toy(max_len=7, seq_len=8)
    model = Counter()
    full = task.collate(
        "val", np.array([i for i in range(20) if len(task.splits["val"].sequence(i)) == 7])
    )
    task.loss(model, full)
    assert model.masks[-1] is None
    padded = task.batch("val", 0, 20)
    task.loss(model, padded)
    assert torch.equal(model.masks[-1], padded["attention_mask"])


# -- model checks ------------------------------------------------------------------------------------


def encoder_cfg(**fields: object) -> object:
    base = {
        "kind": "encoder",
        "vocab_size": 6,
        "dim": 16,
        "depth": 1,
        "num_heads": 2,
        "max_seq_len": 8,
    }
    base["head"] = {"kind": "classifier", "num_classes": 3}
    base.update(fields)
    return fl.build_model(base).config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"head": {"kind": "classifier", "num_classes": 4}},
            r"model.head.num_classes: invalid value 4; .*allowed: 3",
        ),
        ({"head": {"kind": "mlm"}}, r"model.head.kind: 'mlm' cannot train .*allowed: classifier"),
        ({"vocab_size": 5}, r"model.vocab_size: 5 is smaller"),
        ({"max_seq_len": 7}, r"model.max_seq_len: 7 is shorter than task.seq_len=8"),
    ],
)
def test_check_model_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        toy().check_model(encoder_cfg(**fields), "model")


def test_check_model_accepts_a_matching_encoder_and_rejects_a_decoder() -> None:
    toy().check_model(encoder_cfg())
    decoder = fl.build_model(
        {"kind": "decoder_lm", "vocab_size": 6, "dim": 16, "depth": 1, "num_heads": 2}
    ).config
    with pytest.raises(
        ConfigError, match=r"model.kind: 'decoder_lm' cannot train .*allowed: encoder"
    ):
        toy().check_model(decoder)


def test_an_encoder_classifier_runs_on_batches_with_and_without_padding() -> None:
    task = toy()
    model = fl.build_model(encoder_cfg().to_dict())
    loss, _ = task.loss(model, task.batch("train", 0, 8))
    loss.backward()
    assert torch.isfinite(loss)
    assert set(task.evaluate(model, 8)) == {"val_loss", "accuracy", "majority_baseline"}


# -- the shipped LRA run files -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["listops-tiny", "pathfinder-tiny"])
def test_lra_run_files_load_and_train_a_few_steps(name: str, tmp_path: Path) -> None:
    path = REPO / "configs" / "repro" / "lra" / f"{name}.yaml"
    run = fl.load_config(path)
    assert run.model.kind == "encoder" and run.model.head.kind == "classifier"
    small = [
        "train.steps=3",
        "train.threads=1",
        "train.schedule.warmup_steps=1",
        "train.batch_size=4",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "task.train_size=40",
        "task.val_size=8",
        "task.test_size=8",
        "task.eval_batches=2",
    ]
    summary = train(fl.load_config(path, small), tmp_path / "run", progress=False)
    assert summary["final_step"] == 3
    assert {"accuracy", "majority_baseline", "val_loss"} <= set(summary["val"])
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("accuracy" in r for r in records)
    assert summary["data"]["task"] == run.task.kind
