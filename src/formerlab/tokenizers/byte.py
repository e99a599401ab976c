"""The ``byte`` tokenizer: one token per byte, vocabulary 256, nothing to train.

``encode`` takes ``str`` (encoded as UTF-8) or ``bytes`` (used as is), so any byte string round-trips
exactly through :meth:`ByteTokenizer.encode_many` / :meth:`ByteTokenizer.decode_bytes`. ``decode``
returns ``str`` and replaces byte sequences that are not valid UTF-8 with U+FFFD.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import InputError
from ..registry import TOKENIZER
from .base import Tokenizer, TokenizerConfig


@dataclass(kw_only=True)
class ByteTokenizerConfig(TokenizerConfig):
    """One token per byte (ids 0..255)."""

    kind: ClassVar[str] = "byte"


def to_bytes(text: str | bytes) -> bytes:
    """``str`` → its UTF-8 bytes; ``bytes`` unchanged. A lone surrogate is an InputError."""
    if isinstance(text, bytes | bytearray | memoryview):
        return bytes(text)
    if not isinstance(text, str):
        raise InputError(f"text: expected str or bytes, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"text: character {text[exc.start]!r} at index {exc.start} cannot be encoded as "
            "UTF-8 (lone surrogate); allowed: valid Unicode text or bytes"
        ) from None


def check_ids(ids: list[int], vocab_size: int) -> list[int]:
    """Raise InputError naming the first id outside ``[0, vocab_size)``."""
    ids = [int(i) for i in ids]
    for pos, i in enumerate(ids):
        if not 0 <= i < vocab_size:
            raise InputError(f"ids[{pos}]: invalid token id {i}; allowed: 0..{vocab_size - 1}")
    return ids


@TOKENIZER.register(ByteTokenizerConfig)
class ByteTokenizer(Tokenizer):
    """Bytes are tokens: lossless for any input, 256 ids, no training."""

    vocab_size = 256

    def __init__(self, cfg: ByteTokenizerConfig | None = None) -> None:
        self.config = cfg if cfg is not None else ByteTokenizerConfig()

    def encode(self, text: str | bytes) -> list[int]:
        return list(to_bytes(text))

    def encode_many(self, texts: list[bytes]) -> np.ndarray:
        """All ``texts`` tokenized and concatenated, as a uint8 array (no copy per token)."""
        return np.frombuffer(b"".join(to_bytes(t) for t in texts), dtype=np.uint8).copy()

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(check_ids(ids, self.vocab_size))

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        from . import save_tokenizer

        save_tokenizer(self, directory)
