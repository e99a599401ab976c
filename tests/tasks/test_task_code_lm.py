"""code_lm: the standard-library corpus, its manifest and split, batches, metrics, saved state."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from formerlab.errors import ConfigError, InputError
from formerlab.registry import TASK
from formerlab.tasks import CodeLMConfig, CodeLMTask, stdlib_files
from formerlab.tasks.base import TaskConfig
from formerlab.tasks.code_lm import stdlib_root
from formerlab.tasks.lm import name_fraction, split_by_file
from formerlab.tokenizers import BPETokenizer, load_tokenizer

SMALL = {"kind": "code_lm", "seq_len": 32, "eval_batches": 2, "max_files": 12}


class Uniform(nn.Module):
    """Equal logits for every token: loss ln(V) per token."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids: torch.Tensor, attention_mask: object = None) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, self.vocab_size)


@pytest.fixture(scope="module")
def task() -> CodeLMTask:
    return TASK.build(TaskConfig.from_dict(SMALL), seed=0)


def test_file_list_is_the_documented_glob(tmp_path: Path) -> None:
    root = stdlib_root()
    listed = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
    rel = ["/" + Path(p).relative_to(root).as_posix() for p in listed]
    with_tests = [r[1:] for r in rel if "site-packages" not in r]
    without = [r for r in with_tests if "/test/" not in "/" + r and "/tests/" not in "/" + r]
    assert stdlib_files(include_tests=True) == with_tests
    assert stdlib_files() == without
    assert len(without) > 100


def test_full_corpus_split_is_by_file_and_about_val_fraction() -> None:
    names = stdlib_files()
    split = split_by_file([SimpleNamespace(name=n, data=b"x") for n in names], 0.05)
    val = {d.name for d in split["val"]}
    assert val == {n for n in names if name_fraction(n) < 0.05}
    assert not val & {d.name for d in split["train"]}
    assert 0.02 < len(val) / len(names) < 0.09


def test_manifest_matches_the_files_on_disk(task: CodeLMTask) -> None:
    info = task.data_info()
    files = info["manifest"]["files"]
    assert len(files) == 12
    assert [f["path"] for f in files] == sorted(f["path"] for f in files)
    for f in files:
        data = (stdlib_root() / f["path"]).read_bytes()
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
        assert f["bytes"] == len(data)
    listing = "".join(f"{f['sha256']}  {f['path']}\n" for f in files)
    assert info["manifest"]["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    splits = info["splits"]
    assert splits["train"]["files"] + splits["val"]["files"] == 12
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == sum(f["bytes"] for f in files)
    assert splits["val"]["tokens"] == splits["val"]["bytes"]  # byte tokenizer
    assert 3.0 < info["unigram_entropy_bits"] < 7.0
    assert info["files_available"] == len(stdlib_files())


def test_splits_are_disjoint_files(task: CodeLMTask) -> None:
    train = {d.name for d in task.splits["train"]}
    val = {d.name for d in task.splits["val"]}
    assert train and val and not train & val
    assert set(task.data_info()["val_files"]) == val


def test_batches_are_pure_functions_of_seed_split_index(task: CodeLMTask) -> None:
    a = task.batch("train", 3, 4)
    b = task.batch("train", 3, 4)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["input_ids"], task.batch("train", 4, 4)["input_ids"])
    other_seed = TASK.build(TaskConfig.from_dict(SMALL), seed=1)
    assert not torch.equal(a["input_ids"], other_seed.batch("train", 3, 4)["input_ids"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_windows_come_from_their_split_with_shifted_labels(task: CodeLMTask, split: str) -> None:
    batch = task.batch(split, 0, 8)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape == (8, 32) and ids.dtype == labels.dtype == torch.long
    assert torch.equal(ids[:, 1:], labels[:, :-1])
    stream = b"".join(d.data for d in task.splits[split])
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist(), strict=True):
        assert bytes([*row_ids, row_labels[-1]]) in stream


def test_bad_split_or_batch_size_is_an_input_error(task: CodeLMTask) -> None:
    with pytest.raises(InputError, match="split: invalid value 'test'"):
        task.batch("test", 0, 2)
    with pytest.raises(InputError, match="batch_size: invalid value 0"):
        task.batch("train", 0, 0)


def test_uniform_model_scores_eight_bits_per_byte(task: CodeLMTask) -> None:
    out = task.evaluate(Uniform(256), batch_size=2)
    assert math.isclose(out["val_loss"], math.log(256), rel_tol=1e-6)
    assert math.isclose(out["bits_per_byte"], 8.0, rel_tol=1e-6)


def test_bpe_task_saves_its_tokenizer_and_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = {**SMALL, "max_files": 6, "tokenizer": {"kind": "bpe", "vocab_size": 300}}
    first = TASK.build(TaskConfig.from_dict(cfg), seed=0, workdir=tmp_path)
    saved = json.loads((tmp_path / "data_manifest.json").read_text())
    assert saved["manifest"] == first.data_info()["manifest"]
    assert saved["tokenizer"] == {"kind": "bpe", "vocab_size": 300, "min_frequency": 2}
    reloaded = load_tokenizer(tmp_path)
    sample = b"".join(d.data for d in first.splits["val"])
    assert reloaded.encode(sample) == first.tokenizer.encode(sample)
    assert first.vocab_size == reloaded.vocab_size > 256
    monkeypatch.setattr(BPETokenizer, "train", None)  # a resumed run reuses the saved tokenizer
    again = TASK.build(TaskConfig.from_dict(cfg), seed=0, workdir=tmp_path)
    assert torch.equal(again.batch("val", 0, 2)["input_ids"], first.batch("val", 0, 2)["input_ids"])
    tpb = first.tokens_per_byte("val")
    assert tpb < 0.8
    out = first.evaluate(Uniform(first.vocab_size), batch_size=2)
    assert math.isclose(out["bits_per_byte"], math.log2(first.vocab_size) * tpb, rel_tol=1e-6)


def test_config_round_trip_and_defaults() -> None:
    d = {
        "kind": "code_lm",
        "seq_len": 64,
        "eval_batches": 3,
        "val_fraction": 0.1,
        "tokenizer": {"kind": "bpe", "vocab_size": 512, "min_frequency": 2},
        "include_tests": True,
        "max_files": 10,
    }
    assert TaskConfig.from_dict(d).to_dict() == d
    default = CodeLMConfig()
    assert default.to_dict()["tokenizer"] == {"kind": "byte"}
    assert default.max_files is None and default.include_tests is False


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("max_files", 1, "null or >= 2"),
        ("val_fraction", 0.0, "0 < val_fraction < 1"),
        ("val_fraction", 1.0, "0 < val_fraction < 1"),
        ("seq_len", 0, ">= 1"),
        ("eval_batches", 0, ">= 1"),
    ],
)
def test_invalid_fields_name_path_value_and_rule(field: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        TaskConfig.from_dict({"kind": "code_lm", field: value}, "task")
    assert f"task.{field}: invalid value {value!r}; allowed: {allowed}" in str(err.value)


def test_check_model_enforces_vocab_and_seq_len(task: CodeLMTask) -> None:
    ok = SimpleNamespace(kind="decoder_lm", vocab_size=256, max_seq_len=32)
    task.check_model(ok)
    with pytest.raises(ConfigError, match="model.vocab_size: 100 .* allowed: >= 256"):
        task.check_model(SimpleNamespace(kind="decoder_lm", vocab_size=100, max_seq_len=64))
    with pytest.raises(ConfigError, match="model.max_seq_len: 16 .* allowed: >= 32"):
        task.check_model(SimpleNamespace(kind="decoder_lm", vocab_size=256, max_seq_len=16))
    with pytest.raises(ConfigError, match="model.kind: 'encoder'"):
        task.check_model(SimpleNamespace(kind="encoder", vocab_size=256, max_seq_len=64))
