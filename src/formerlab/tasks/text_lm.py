"""``text_lm``: language modelling on the user's own files.

``files`` is one glob pattern or a list (``**`` is recursive; relative patterns are resolved against
the current directory). Every pattern must match at least one file; folders are ignored; the union of
the matches is sorted and read as bytes. Each document's name (its manifest key and split key) is the
matched path as written by the pattern, normalised (``os.path.normpath``). Two or more files are split
by file, one file by bytes (rules in :mod:`formerlab.tasks.lm`).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import join, param
from ..errors import ConfigError, DataError
from ..registry import TASK
from .lm import Document, LMTask, LMTaskConfig


@dataclass(kw_only=True)
class TextLMConfig(LMTaskConfig):
    """Next-token prediction on your own text files (bytes; split by file, or by bytes for one)."""

    kind: ClassVar[str] = "text_lm"
    files: str | list[str] = param(
        "data/**/*.txt", doc="glob pattern(s) relative to the current directory; ** is recursive"
    )

    def patterns(self) -> list[str]:
        return [self.files] if isinstance(self.files, str) else list(self.files)

    def validate(self, path: str = "") -> None:
        super().validate(path)
        patterns = self.patterns()
        if not patterns or not all(p.strip() for p in patterns):
            raise ConfigError(
                f"{join(path, 'files')}: invalid value {self.files!r}; "
                "allowed: a non-empty glob pattern or a non-empty list of them"
            )


def match_files(patterns: list[str]) -> list[str]:
    """The sorted union of the files matched by ``patterns``; DataError naming an empty pattern."""
    found: set[str] = set()
    for pattern in patterns:
        hits = [h for h in glob.glob(pattern, recursive=True) if not os.path.isdir(h)]
        if not hits:
            raise DataError(
                f"task.files: pattern {pattern!r} matches no files "
                f"(relative patterns are resolved in {os.getcwd()!r})"
            )
        found.update(os.path.normpath(h) for h in hits)
    return sorted(found)


def read_file(path: str) -> Document:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"task.files: cannot read {path!r} ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"task.files: {path!r} is empty; allowed: files with at least one byte")
    return Document(path, data)


@TASK.register(TextLMConfig)
class TextLMTask(LMTask):
    """Byte-level (or BPE) language modelling on files you point it at."""

    config: TextLMConfig
    source = "files"

    def load_documents(self) -> list[Document]:
        return [read_file(p) for p in match_files(self.config.patterns())]

    def extra_info(self) -> dict[str, Any]:
        return {"patterns": self.config.patterns(), "cwd": os.getcwd()}
