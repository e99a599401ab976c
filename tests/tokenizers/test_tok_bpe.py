"""Byte-level BPE: lossless UTF-8 round trip, deterministic training, safe on invalid UTF-8."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formerlab.errors import ConfigError, DataError, InputError
from formerlab.tokenizers import BPETokenizer, BPETokenizerConfig, TokenizerConfig, build_tokenizer

CORPUS = [
    b"def add(a, b):\n    return a + b\n\n" * 20,
    'class Caf\u00e9:\n    """Na\u00efve docstring \u2014 \u00fcber."""\n    x = 1\n'.encode() * 20,
    b"for i in range(10):\n    print(i, i * i)\n" * 20,
]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    tok = build_tokenizer({"kind": "bpe", "vocab_size": 320, "min_frequency": 2})
    tok.train(CORPUS)
    return tok


def test_training_learns_merges_that_shorten_text(bpe: BPETokenizer) -> None:
    assert 256 < bpe.vocab_size <= 320
    text = "def add(a, b):\n    return a + b\n"
    assert len(bpe.encode(text)) < len(text.encode()) / 2


def test_training_is_deterministic(bpe: BPETokenizer) -> None:
    again = BPETokenizer(BPETokenizerConfig(vocab_size=320))
    again.train(list(CORPUS))
    assert again.state_text() == bpe.state_text()


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_any_unicode_text_round_trips(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    assert bpe.encode(text.encode()) == ids


def test_encode_many_concatenates_per_text_ids(bpe: BPETokenizer) -> None:
    texts = [b"return a + b\n", b"print(i)\n", b""]
    expected = [i for t in texts for i in bpe.encode(t)]
    assert bpe.encode_many(texts).tolist() == expected


def test_invalid_utf8_is_replaced_not_fatal(bpe: BPETokenizer) -> None:
    ids = bpe.encode(b"ab\xffcd\xc3")
    assert bpe.decode(ids) == "ab\ufffdcd\ufffd"
    other = BPETokenizer(BPETokenizerConfig(vocab_size=300))
    other.train([b"\xff\xfe not utf-8 \x80" * 10, *CORPUS])
    assert other.decode(other.encode("plain")) == "plain"


def test_untrained_or_empty_training_is_a_data_error() -> None:
    tok = BPETokenizer()
    with pytest.raises(DataError, match="not trained"):
        tok.encode("x")
    with pytest.raises(DataError, match="no training text"):
        tok.train([])
    with pytest.raises(DataError, match="no training text"):
        tok.train([b"", b""])


def test_out_of_range_id_is_an_input_error(bpe: BPETokenizer) -> None:
    with pytest.raises(InputError, match=f"ids\\[0\\]: invalid token id {bpe.vocab_size}"):
        bpe.decode([bpe.vocab_size])


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("vocab_size", 100, ">= 256"), ("min_frequency", 0, ">= 1")],
)
def test_config_validation_names_field_value_and_rule(field: str, value: int, allowed: str) -> None:
    with pytest.raises(
        ConfigError, match=f"tok.{field}: invalid value {value}; allowed: {allowed}"
    ):
        TokenizerConfig.from_dict({"kind": "bpe", field: value}, "tok")


def test_config_round_trip() -> None:
    d = {"kind": "bpe", "vocab_size": 512, "min_frequency": 3}
    cfg = TokenizerConfig.from_dict(d)
    assert isinstance(cfg, BPETokenizerConfig)
    assert cfg.to_dict() == d
