"""Tokenizers (registry group ``tokenizer``): ``byte`` (default) and ``bpe``.

A tokenizer is saved beside the model or inside a run directory as ``tokenizer.yaml`` (its config
dict) plus, for trained kinds, its learned state (``tokenizer.json`` for ``bpe``). Every file is
written to a temporary name, fsynced and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text as write_text_atomic
from ..registry import TOKENIZER
from .base import Tokenizer, TokenizerConfig
from .bpe import BPETokenizer, BPETokenizerConfig
from .byte import ByteTokenizer, ByteTokenizerConfig

CONFIG_FILE = "tokenizer.yaml"

__all__ = [
    "CONFIG_FILE",
    "BPETokenizer",
    "BPETokenizerConfig",
    "ByteTokenizer",
    "ByteTokenizerConfig",
    "Tokenizer",
    "TokenizerConfig",
    "build_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
    "write_text_atomic",
]


def build_tokenizer(cfg: TokenizerConfig | dict[str, Any] | str) -> Tokenizer:
    """A tokenizer from its config (``"byte"``, ``{"kind": "bpe", "vocab_size": 512}``, ...)."""
    return TOKENIZER.build(cfg)


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> None:
    """Write ``tokenizer.yaml`` (and the learned state, if any) into ``directory``.

    The state file is written first, so a present ``tokenizer.yaml`` always has its state beside it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tok.filename:
        write_text_atomic(directory / tok.filename, tok.state_text())  # type: ignore[attr-defined]
    write_text_atomic(
        directory / CONFIG_FILE, yaml.safe_dump(tok.config.to_dict(), sort_keys=False)
    )


def _read_config(path: Path) -> TokenizerConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read the tokenizer config ({exc})") from None
    try:
        return TokenizerConfig.from_dict(data, "tokenizer")
    except ConfigError as exc:
        raise DataError(f"{path}: invalid tokenizer config: {exc}") from None


def load_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The tokenizer saved in ``directory``; None if it holds no ``tokenizer.yaml``.

    A missing or corrupt state file (``tokenizer.json``) is a DataError naming the file.
    """
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        return None
    tok = build_tokenizer(_read_config(cfg_path))
    if tok.filename:
        state_path = directory / tok.filename
        try:
            text = state_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{state_path}: cannot read the {tok.config.kind} tokenizer state "
                f"named by {cfg_path.name} ({exc})"
            ) from None
        tok.load_state(text, state_path)  # type: ignore[attr-defined]
    return tok
