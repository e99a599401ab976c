"""The byte tokenizer: lossless bytes, UTF-8 for str, clear errors for bad ids and text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from formerlab.errors import InputError
from formerlab.tokenizers import ByteTokenizer, ByteTokenizerConfig, build_tokenizer


def test_default_kind_builds_byte_tokenizer() -> None:
    tok = build_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer)
    assert tok.vocab_size == 256
    assert tok.config.to_dict() == {"kind": "byte"}
    assert ByteTokenizerConfig.from_dict(tok.config.to_dict()) == tok.config


def test_str_is_encoded_as_utf8() -> None:
    tok = ByteTokenizer()
    assert tok.encode("é€") == list("é€".encode())
    assert tok.encode(b"\x00\xff") == [0, 255]


@given(st.binary(max_size=200))
def test_any_bytes_round_trip_exactly(data: bytes) -> None:
    tok = ByteTokenizer()
    assert tok.decode_bytes(tok.encode(data)) == data
    assert tok.encode_many([data, data]).tobytes() == data + data


@given(st.text(max_size=100))
def test_text_round_trips(text: str) -> None:
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_invalid_utf8_decodes_with_replacement() -> None:
    assert ByteTokenizer().decode([0x61, 0xFF, 0x62]) == "a\ufffdb"


@pytest.mark.parametrize("bad", [256, -1])
def test_out_of_range_id_is_an_input_error(bad: int) -> None:
    with pytest.raises(InputError, match=rf"ids\[1\]: invalid token id {bad}; allowed: 0\.\.255"):
        ByteTokenizer().decode([65, bad])


def test_lone_surrogate_is_an_input_error() -> None:
    with pytest.raises(InputError, match="index 2"):
        ByteTokenizer().encode("ab\ud800")
    with pytest.raises(InputError, match="str or bytes"):
        ByteTokenizer().encode(123)  # type: ignore[arg-type]
