"""The ``bpe`` tokenizer: byte-level BPE learned with Hugging Face ``tokenizers`` on the task's data.

The model is GPT-2 style: the ByteLevel pre-tokenizer maps every UTF-8 byte to a printable character
(after its word-splitting regex), BPE merges are learned on top of the full 256-byte alphabet, and the
ByteLevel decoder maps back. Every valid UTF-8 text therefore round-trips exactly through
``decode(encode(text))``.

Bytes that are not valid UTF-8 (the BPE works on text, not raw bytes): ``encode`` and ``train``
decode them with ``errors="replace"``, so each invalid sequence becomes U+FFFD (encoded as the three
bytes EF BF BD). Nothing crashes; the round trip of such input gives the replaced text. Training is
deterministic: the same texts in the same order give the same ``tokenizer.json``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ..config import join, param
from ..errors import ConfigError, DataError
from ..registry import TOKENIZER
from .base import Tokenizer, TokenizerConfig
from .byte import check_ids, to_bytes

ALPHABET_SIZE = 256


@dataclass(kw_only=True)
class BPETokenizerConfig(TokenizerConfig):
    """Byte-level BPE (GPT-2 style), trained on the task's own training split."""

    kind: ClassVar[str] = "bpe"
    vocab_size: int = param(1024, doc="target vocabulary: 256 byte tokens + learned merges")
    min_frequency: int = param(2, doc="a pair must occur this often to be merged")

    def validate(self, path: str = "") -> None:
        if self.vocab_size < ALPHABET_SIZE:
            raise ConfigError(
                f"{join(path, 'vocab_size')}: invalid value {self.vocab_size!r}; "
                f"allowed: >= {ALPHABET_SIZE} (the byte alphabet)"
            )
        if self.min_frequency < 1:
            raise ConfigError(
                f"{join(path, 'min_frequency')}: invalid value {self.min_frequency!r}; allowed: >= 1"
            )


def as_text(data: str | bytes) -> str:
    """Text for the HF tokenizer: bytes decoded as UTF-8, invalid sequences → U+FFFD."""
    if isinstance(data, str):
        to_bytes(data)  # rejects lone surrogates with an InputError
        return data
    return to_bytes(data).decode("utf-8", errors="replace")


def new_hf_tokenizer() -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@TOKENIZER.register(BPETokenizerConfig)
class BPETokenizer(Tokenizer):
    """Byte-level BPE: call :meth:`train` (or load a saved one) before encoding."""

    filename = "tokenizer.json"

    def __init__(self, cfg: BPETokenizerConfig | None = None) -> None:
        self.config = cfg if cfg is not None else BPETokenizerConfig()
        self._hf: HFTokenizer | None = None

    @property
    def trained(self) -> bool:
        return self._hf is not None

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return self._require().get_vocab_size()

    def _require(self) -> HFTokenizer:
        if self._hf is None:
            raise DataError(
                "bpe tokenizer: not trained yet; call train(texts) or load a saved tokenizer.json"
            )
        return self._hf

    def train(self, texts: list[bytes]) -> None:
        if len(texts) == 0 or not any(len(t) for t in texts):
            raise DataError("bpe tokenizer: no training text (empty list or only empty texts)")
        trainer = trainers.BpeTrainer(
            vocab_size=self.config.vocab_size,
            min_frequency=self.config.min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf = new_hf_tokenizer()
        hf.train_from_iterator((as_text(t) for t in texts), trainer=trainer, length=len(texts))
        self._hf = hf

    def encode(self, text: str | bytes) -> list[int]:
        return self._require().encode(as_text(text)).ids

    def encode_many(self, texts: list[bytes]) -> np.ndarray:
        """All ``texts`` tokenized (in parallel) and concatenated, as an int32 array."""
        encodings = self._require().encode_batch([as_text(t) for t in texts])
        ids = itertools.chain.from_iterable(e.ids for e in encodings)
        return np.fromiter(ids, dtype=np.int32)

    def decode(self, ids: list[int]) -> str:
        hf = self._require()
        return hf.decode(check_ids(ids, hf.get_vocab_size()), skip_special_tokens=False)

    # -- persistence (used by save_tokenizer / load_tokenizer) -----------------------------------
    def state_text(self) -> str:
        """The trained tokenizer as Hugging Face ``tokenizer.json`` text."""
        return self._require().to_str()

    def load_state(self, text: str, source: Any = "tokenizer.json") -> None:
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as exc:  # the Rust side raises plain Exception on bad JSON
            raise DataError(f"{source}: not a valid tokenizer.json ({exc})") from None
        if not isinstance(hf.model, models.BPE):
            raise DataError(f"{source}: holds a {type(hf.model).__name__} model, expected BPE")
        self._hf = hf

    def save(self, directory: str | Path) -> None:
        from . import save_tokenizer

        save_tokenizer(self, directory)
