"""``code_lm``: language modelling on the Python standard library's own sources (the default corpus).

The file list is what ``sorted(glob(<stdlib>/**/*.py, recursive=True))`` gives, minus paths (relative
to the stdlib folder) containing ``site-packages`` and, unless ``include_tests``, ``/test/`` or
``/tests/``. It is computed with a pruned ``os.walk`` (the excluded folders are never listed), which
gives the same sorted list far faster when a large ``site-packages`` sits inside the stdlib folder.
Files are read as bytes and split by file (rule in :mod:`formerlab.tasks.lm`); ``data_info`` records
their sha256 manifest, because the corpus changes with the Python patch version.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import join, param
from ..errors import ConfigError, DataError
from ..registry import TASK
from .lm import Document, LMTask, LMTaskConfig


@dataclass(kw_only=True)
class CodeLMConfig(LMTaskConfig):
    """Next-token prediction on the Python standard library sources (bytes, split by file)."""

    kind: ClassVar[str] = "code_lm"
    include_tests: bool = param(False, doc="also use files under test/ and tests/ folders")
    max_files: int | None = param(
        None, doc="use an evenly spaced subset of this many files of the sorted list; null: all"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.max_files is not None and self.max_files < 2:
            raise ConfigError(
                f"{join(path, 'max_files')}: invalid value {self.max_files!r}; "
                "allowed: null or >= 2 (the split is by file)"
            )


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def excluded(rel: str, include_tests: bool) -> bool:
    """Whether a path relative to the stdlib folder (posix, a folder ending in "/") is left out."""
    rel = "/" + rel
    if "site-packages" in rel:
        return True
    return not include_tests and ("/test/" in rel or "/tests/" in rel)


def stdlib_files(include_tests: bool = False, root: str | Path | None = None) -> list[str]:
    """The corpus file list: sorted posix paths relative to ``root`` (default: the stdlib folder)."""
    root = Path(root) if root is not None else stdlib_root()
    found: list[str] = []
    for folder, subdirs, names in os.walk(root, followlinks=True):
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        subdirs[:] = [
            d for d in subdirs if d[0] != "." and not excluded(f"{prefix}{d}/", include_tests)
        ]
        for name in names:
            if (
                name.endswith(".py")
                and name[0] != "."
                and not excluded(prefix + name, include_tests)
            ):
                found.append(prefix + name)
    return sorted(found)


def evenly_spaced(items: list[str], count: int | None) -> list[str]:
    """``count`` items spread evenly over ``items`` (all of them when ``count`` is None or larger)."""
    if count is None or count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def read_documents(root: Path, names: list[str]) -> list[Document]:
    docs = []
    for name in names:
        try:
            docs.append(Document(name, (root / name).read_bytes()))
        except OSError as exc:
            raise DataError(f"code_lm: cannot read {str(root / name)!r} ({exc.strerror})") from None
    return docs


@TASK.register(CodeLMConfig)
class CodeLMTask(LMTask):
    """Byte-level (or BPE) language modelling on the Python standard library."""

    config: CodeLMConfig
    source = "python-stdlib"

    def load_documents(self) -> list[Document]:
        root = stdlib_root()
        self.available = stdlib_files(self.config.include_tests, root)
        if len(self.available) < 2:
            raise DataError(f"code_lm: found {len(self.available)} .py files under {str(root)!r}")
        return read_documents(root, evenly_spaced(self.available, self.config.max_files))

    def extra_info(self) -> dict[str, Any]:
        return {
            "stdlib": str(stdlib_root()),
            "python": platform.python_version(),
            "include_tests": self.config.include_tests,
            "max_files": self.config.max_files,
            "files_available": len(self.available),
        }
