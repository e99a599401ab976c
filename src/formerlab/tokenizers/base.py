"""The tokenizer contract: bytes/str in, ids out, saved beside the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..config import KindConfig


@dataclass(kw_only=True)
class TokenizerConfig(KindConfig):
    group: ClassVar[str] = "tokenizer"


class Tokenizer:
    """Base class: ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``save(dir)``."""

    config: TokenizerConfig
    vocab_size: int
    eos_id: int | None = None
    #: file name (inside a run or model directory) holding the trained state, if any
    filename: ClassVar[str | None] = None

    def encode(self, text: str | bytes) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def train(self, texts: list[bytes]) -> None:
        """Learn from training data (no-op for fixed tokenizers)."""

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.yaml`` (the config) and any learned state into ``directory``."""
        raise NotImplementedError
