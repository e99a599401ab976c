"""Crash-safe file writing shared by checkpoints, run files, tokenizers, models, reports and claims.

A file is written to a temporary name in the same folder, flushed and fsynced, given the permissions
a plain ``open()`` would give it, renamed over the target, and the folder is fsynced: a reader sees
the old file or the new one, never half of one, even after ``kill -9`` or a power cut.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def chmod_default(path: str | Path) -> None:
    """The permissions a plain ``open()``/``mkdir`` gives (``mkstemp``/``mkdtemp`` use 0600/0700)."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Let ``write(tmp_path)`` create the file, then publish it at ``path`` atomically."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        fsync_file(tmp)
        chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text: text must be str, got {type(text).__name__}")
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
