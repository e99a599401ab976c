"""save_tokenizer / load_tokenizer: what is written, identical ids after loading, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from formerlab.errors import DataError
from formerlab.tokenizers import (
    BPETokenizer,
    BPETokenizerConfig,
    ByteTokenizer,
    load_tokenizer,
    save_tokenizer,
    write_text_atomic,
)

TEXT = "def f(x):\n    return x * 2  # d\u00e9j\u00e0 vu\n"


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    tok = BPETokenizer(BPETokenizerConfig(vocab_size=300))
    tok.train([TEXT.encode() * 30, b"while True:\n    pass\n" * 30])
    return tok


def test_bpe_save_load_gives_identical_ids(bpe: BPETokenizer, tmp_path: Path) -> None:
    save_tokenizer(bpe, tmp_path / "run")
    assert yaml.safe_load((tmp_path / "run" / "tokenizer.yaml").read_text()) == bpe.config.to_dict()
    loaded = load_tokenizer(tmp_path / "run")
    assert isinstance(loaded, BPETokenizer)
    assert loaded.config == bpe.config
    assert loaded.vocab_size == bpe.vocab_size
    assert loaded.encode(TEXT) == bpe.encode(TEXT)
    assert loaded.decode(bpe.encode(TEXT)) == TEXT


def test_byte_save_writes_only_the_config(tmp_path: Path) -> None:
    ByteTokenizer().save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.yaml"]
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ByteTokenizer)
    assert loaded.encode(TEXT) == list(TEXT.encode())


def test_no_tokenizer_yaml_means_none(tmp_path: Path) -> None:
    assert load_tokenizer(tmp_path) is None
    assert load_tokenizer(tmp_path / "missing") is None


def test_missing_state_file_is_a_data_error(bpe: BPETokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(DataError, match=r"tokenizer\.json: cannot read the bpe tokenizer state"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_model"])
def test_corrupt_state_file_is_a_data_error(bpe: BPETokenizer, tmp_path: Path, damage: str) -> None:
    bpe.save(tmp_path)
    path = tmp_path / "tokenizer.json"
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        path.write_text("{not json")
    else:
        data = json.loads(text)
        data["model"] = {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}
        path.write_text(json.dumps(data))
    expected = "holds a WordLevel model, expected BPE" if damage == "wrong_model" else "not a valid"
    with pytest.raises(DataError, match=expected):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [("kind: nope\n", "unknown tokenizer kind 'nope'"), ("[unclosed\n", "cannot read")],
)
def test_bad_tokenizer_yaml_is_a_data_error(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "tokenizer.yaml").write_text(content)
    with pytest.raises(DataError, match=match):
        load_tokenizer(tmp_path)


def test_saving_untrained_bpe_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not trained"):
        save_tokenizer(BPETokenizer(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    write_text_atomic(target, "old")
    with pytest.raises(TypeError):
        write_text_atomic(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
