"""text_lm: your own files by glob pattern, with clear DataErrors and the shared LM behaviour."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from formerlab.errors import ConfigError, DataError
from formerlab.registry import TASK
from formerlab.tasks import TextLMTask
from formerlab.tasks.base import TaskConfig
from formerlab.tasks.lm import name_fraction
from formerlab.tokenizers import load_tokenizer

LINES = "the quick brown fox jumps over the lazy dog {}\n"


def build(files: object, workdir: Path | None = None, **fields: object) -> TextLMTask:
    cfg = {"kind": "text_lm", "files": files, "seq_len": 16, "eval_batches": 2, **fields}
    return TASK.build(TaskConfig.from_dict(cfg), seed=0, workdir=workdir)


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """data/a.txt, data/b.txt and data/sub/c.txt .. data/sub/g.txt, with the cwd at tmp_path."""
    monkeypatch.chdir(tmp_path)
    names = ["a", "b", *(f"sub/{c}" for c in "cdefg")]
    for i, name in enumerate(names):
        path = tmp_path / "data" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(LINES.format(i * 100 + j) for j in range(20)))
    return tmp_path


def test_recursive_glob_and_split_by_file(corpus: Path) -> None:
    task = build("data/**/*.txt")
    names = [f["path"] for f in task.data_info()["manifest"]["files"]]
    assert names == sorted(
        os.path.normpath(p)
        for p in ["data/a.txt", "data/b.txt"] + [f"data/sub/{c}.txt" for c in "cdefg"]
    )
    val = [d.name for d in task.splits["val"]]
    train = [d.name for d in task.splits["train"]]
    assert val and train and not set(val) & set(train) and sorted(val + train) == names
    assert task.data_info()["split_rule"].startswith("by file")
    expected_val = [n for n in names if name_fraction(n) < 0.3]
    assert val == (expected_val or [min(names, key=name_fraction)])


def test_list_of_patterns_is_a_deduplicated_union(corpus: Path) -> None:
    task = build(["data/*.txt", "data/a.txt", "data/sub/c.txt"])
    names = [f["path"] for f in task.data_info()["manifest"]["files"]]
    assert names == ["data/a.txt", "data/b.txt", "data/sub/c.txt"]


def test_one_file_is_split_by_bytes(corpus: Path) -> None:
    task = build("data/a.txt", val_fraction=0.25)
    data = (corpus / "data/a.txt").read_bytes()
    train, val = task.splits["train"][0].data, task.splits["val"][0].data
    assert train + val == data and len(val) == -(-len(data) // 4)
    assert task.streams["train"].tobytes() == train and task.streams["val"].tobytes() == val
    assert task.data_info()["split_rule"].startswith("by bytes")


def test_batches_are_deterministic_and_aligned(corpus: Path) -> None:
    task = build("data/**/*.txt")
    a, b = task.batch("val", 1, 3), build("data/**/*.txt").batch("val", 1, 3)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["input_ids"], task.batch("val", 2, 3)["input_ids"])
    assert torch.equal(a["input_ids"][:, 1:], a["labels"][:, :-1])


def test_pattern_matching_nothing_is_named(corpus: Path) -> None:
    with pytest.raises(DataError, match=r"pattern 'data/\*\.md' matches no files"):
        build(["data/*.txt", "data/*.md"])
    with pytest.raises(DataError, match="pattern 'data' matches no files"):
        build("data")  # a folder is not a file


def test_unreadable_file_is_named(corpus: Path) -> None:
    (corpus / "data" / "broken.txt").symlink_to(corpus / "nowhere.txt")
    with pytest.raises(DataError, match=r"cannot read 'data/broken\.txt'"):
        build("data/*.txt")


def test_empty_file_is_named(corpus: Path) -> None:
    (corpus / "data" / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"'data/empty\.txt' is empty"):
        build("data/*.txt")


def test_too_little_data_for_seq_len_is_a_data_error(corpus: Path) -> None:
    with pytest.raises(DataError, match=r"val split has \d+ tokens .*task\.seq_len=100 needs"):
        build("data/a.txt", seq_len=100)


def test_invalid_files_field(corpus: Path) -> None:
    for bad in ["", [], [" "]]:
        with pytest.raises(ConfigError, match="task.files: invalid value"):
            TaskConfig.from_dict({"kind": "text_lm", "files": bad}, "task")


def test_config_round_trip() -> None:
    for files in ["notes/*.md", ["a.txt", "b/**/*.txt"]]:
        d = {
            "kind": "text_lm",
            "seq_len": 128,
            "eval_batches": 4,
            "val_fraction": 0.1,
            "tokenizer": {"kind": "byte"},
            "files": files,
        }
        assert TaskConfig.from_dict(d).to_dict() == d


def test_workdir_gets_manifest_and_tokenizer(corpus: Path) -> None:
    task = build(
        "data/**/*.txt", workdir=corpus / "run", tokenizer={"kind": "bpe", "vocab_size": 280}
    )
    saved = json.loads((corpus / "run" / "data_manifest.json").read_text())
    assert saved["manifest"]["sha256"] == task.data_info()["manifest"]["sha256"]
    assert saved["patterns"] == ["data/**/*.txt"]
    tok = load_tokenizer(corpus / "run")
    assert tok.encode(LINES.format(7)) == task.tokenizer.encode(LINES.format(7))
    assert not [p for p in (corpus / "run").iterdir() if p.name.endswith(".tmp")]


def test_workdir_tokenizer_is_retrained_when_its_config_changes(corpus: Path) -> None:
    run = corpus / "run"
    build("data/**/*.txt", workdir=run, tokenizer={"kind": "bpe", "vocab_size": 280})
    smaller = build("data/**/*.txt", workdir=run, tokenizer={"kind": "bpe", "vocab_size": 262})
    assert smaller.vocab_size <= 262
    assert load_tokenizer(run).config.to_dict()["vocab_size"] == 262
    (run / "data_manifest.json").write_text("[1, 2")  # corrupt: ignored, rebuilt
    again = build("data/**/*.txt", workdir=run, tokenizer={"kind": "bpe", "vocab_size": 262})
    assert again.tokenizer.state_text() == smaller.tokenizer.state_text()
    assert json.loads((run / "data_manifest.json").read_text())["vocab_size"] == again.vocab_size
