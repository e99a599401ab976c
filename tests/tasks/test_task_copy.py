"""copy: layout of a sequence, scoring only the copy, metrics that separate an oracle from chance."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from formerlab.errors import ConfigError
from formerlab.registry import TASK
from formerlab.tasks import CopyTask, CopyTaskConfig
from formerlab.tasks.base import TaskConfig


def make(**fields: object) -> CopyTask:
    cfg = {"kind": "copy", "seq_len": 20, "num_symbols": 6, "eval_batches": 3, **fields}
    return TASK.build(TaskConfig.from_dict(cfg), seed=0)


class Oracle(nn.Module):
    """Puts all mass on the right answer: the symbol ``length`` positions back."""

    def __init__(self, task: CopyTask, shift: int = 0) -> None:
        super().__init__()
        self.length, self.vocab, self.shift = task.length, task.vocab_size, shift

    def forward(self, input_ids: torch.Tensor, attention_mask: object = None) -> torch.Tensor:
        t = input_ids.shape[1]
        target = input_ids.clone()
        target[:, self.length :] = input_ids[:, self.shift : t - self.length + self.shift]
        return nn.functional.one_hot(target, self.vocab).float() * 50.0


class Random(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor, attention_mask: object = None) -> torch.Tensor:
        return torch.randn(*input_ids.shape, self.vocab)


def test_sequence_layout_and_labels() -> None:
    task = make(length=5)
    batch = task.batch("train", 0, 4)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape == (4, 10)
    symbols = ids[:, :5]
    assert int(symbols.max()) < 6 and int(symbols.min()) >= 0
    assert task.sep_id == 6 and torch.all(ids[:, 5] == 6)
    assert torch.equal(ids[:, 6:], symbols[:, :4])
    assert torch.all(labels[:, :5] == -100)
    assert torch.equal(labels[:, 5:], symbols)


def test_default_length_fills_seq_len() -> None:
    assert make().length == 10
    assert make(seq_len=21).batch("val", 0, 1)["input_ids"].shape == (1, 20)
    assert make().vocab_size == 7


def test_batches_are_pure_functions_of_seed_split_index() -> None:
    a, b = make(), make()
    assert torch.equal(a.batch("train", 7, 3)["input_ids"], b.batch("train", 7, 3)["input_ids"])
    assert not torch.equal(a.batch("train", 7, 3)["input_ids"], a.batch("train", 8, 3)["input_ids"])
    assert not torch.equal(a.batch("train", 7, 3)["input_ids"], a.batch("val", 7, 3)["input_ids"])


def test_oracle_is_perfect_and_random_is_at_chance() -> None:
    task = make(num_symbols=16, seq_len=32)
    perfect = task.evaluate(Oracle(task), batch_size=8)
    assert perfect["token_accuracy"] == 1.0 and perfect["sequence_accuracy"] == 1.0
    assert perfect["val_loss"] < 1e-6
    chance = task.evaluate(Random(task.vocab_size), batch_size=8)
    assert chance["token_accuracy"] < 0.25 and chance["sequence_accuracy"] == 0.0
    assert chance["val_loss"] > math.log(task.vocab_size)


def test_off_by_one_oracle_fails() -> None:
    task = make(num_symbols=16, seq_len=32)
    wrong = task.evaluate(Oracle(task, shift=1), batch_size=8)
    assert wrong["token_accuracy"] < 0.3 and wrong["sequence_accuracy"] == 0.0


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_decoder_learns_to_copy() -> None:
    import formerlab as fl

    task = make(num_symbols=4, length=3, seq_len=8)
    tiny = {"kind": "decoder_lm", "vocab_size": 5, "dim": 32, "depth": 2, "num_heads": 2}
    model = fl.build_model({**tiny, "max_seq_len": 8})
    task.check_model(model.config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        loss, _ = task.loss(model, task.batch("train", step, 32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert task.evaluate(model, batch_size=32)["token_accuracy"] > 0.9


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"length": 11}, "task.length: invalid value 11; allowed: null or 1..10"),
        ({"length": 0}, "task.length: invalid value 0"),
        ({"num_symbols": 1}, "task.num_symbols: invalid value 1; allowed: >= 2"),
        ({"seq_len": 1}, "task.seq_len: invalid value 1; allowed: >= 2"),
        ({"eval_batches": 0}, "task.eval_batches: invalid value 0; allowed: >= 1"),
    ],
)
def test_invalid_config(fields: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        TaskConfig.from_dict({"kind": "copy", "seq_len": 20, **fields}, "task")
    assert message in str(err.value)


def test_config_round_trip() -> None:
    d = {"kind": "copy", "seq_len": 64, "eval_batches": 2, "num_symbols": 8, "length": 20}
    cfg = TaskConfig.from_dict(d)
    assert isinstance(cfg, CopyTaskConfig) and cfg.to_dict() == d
    assert CopyTaskConfig().to_dict()["length"] is None


def test_check_model_uses_vocab_and_seq_len() -> None:
    task = make()
    task.check_model(SimpleNamespace(kind="decoder_lm", vocab_size=7, max_seq_len=20))
    with pytest.raises(ConfigError, match="model.vocab_size: 6 .* allowed: >= 7"):
        task.check_model(SimpleNamespace(kind="decoder_lm", vocab_size=6, max_seq_len=20))
    with pytest.raises(ConfigError, match="model.max_seq_len: 19 .* allowed: >= 20"):
        task.check_model(SimpleNamespace(kind="decoder_lm", vocab_size=7, max_seq_len=19))
