"""Crash-safe checkpoints: ``checkpoints/step_N/`` with weights, training state and a manifest.

Layout of one checkpoint::

    step_N/model.safetensors   the model's tensors (tied/shared weights stored once)
    step_N/state.pt            optimizer state, step, skipped steps, data position, RNG states —
                               tensors and plain Python only, loadable with torch.load(weights_only=True)
    step_N/MANIFEST.json       sha256 and size of every other file

:func:`save_checkpoint` writes everything into a temporary directory, fsyncs each file and the
directory, renames it to ``step_N`` and fsyncs the parent, so a crash at any moment leaves either the
old set of checkpoints or the new one — never a half-written ``step_N`` that passes its manifest.
:func:`latest_valid_checkpoint` verifies manifests newest first, quarantines failures in
``checkpoints/corrupt/`` and removes leftover temporary directories.

Fault injection: ``FORMERLAB_FAULT=<point>[@<step>]`` (points: ``after_weights``, ``after_state``,
``before_rename``) makes the process SIGKILL itself at that point of the real code path, so tests can
prove that a crash there is survivable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..fileio import chmod_default, fsync_dir, fsync_file, sha256_file

WEIGHTS = "model.safetensors"
STATE = "state.pt"
MANIFEST = "MANIFEST.json"
FORMAT_VERSION = 1
FAULT_ENV = "FORMERLAB_FAULT"
FAULT_POINTS = ("after_weights", "after_state", "before_rename")
TMP_PREFIX = ".tmp-"
CORRUPT_DIR = "corrupt"
_STEP_DIR = re.compile(r"step_(\d+)")


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint failed verification and was moved to ``checkpoints/corrupt/``."""


# -- fault injection ---------------------------------------------------------------------------


def fault_from_env() -> tuple[str, int | None] | None:
    """The fault requested by ``FORMERLAB_FAULT`` as ``(point, step or None)``; validated."""
    raw = os.environ.get(FAULT_ENV, "").strip()
    if not raw:
        return None
    point, _, step = raw.partition("@")
    if point not in FAULT_POINTS or (step and not step.isdigit()):
        raise ConfigError(
            f"{FAULT_ENV}: invalid value {raw!r}; allowed: "
            f"{' | '.join(FAULT_POINTS)}, optionally followed by @<step>"
        )
    return point, int(step) if step else None


def _maybe_fault(point: str, step: int) -> None:
    fault = fault_from_env()
    if fault and fault[0] == point and fault[1] in (None, step):
        os.kill(os.getpid(), signal.SIGKILL)


# -- durable file operations -------------------------------------------------------------------


def _remove_tree(path: Path) -> None:
    """Rename ``path`` to a temporary name, then delete it (never leaves a partial ``step_N``)."""
    doomed = path.with_name(f"{TMP_PREFIX}del-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# -- saving ------------------------------------------------------------------------------------


def step_dirs(ckpt_root: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_N`` directory, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(_STEP_DIR.fullmatch(p.name), p) for p in root.iterdir() if p.is_dir()]
    return sorted((int(m.group(1)), p) for m, p in found if m)


def _write_manifest(directory: Path, step: int) -> None:
    files = {
        name: {"sha256": sha256_file(directory / name), "size": (directory / name).stat().st_size}
        for name in (WEIGHTS, STATE)
    }
    manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
    with open(directory / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _write_contents(tmp: Path, step: int, model: nn.Module, state: dict[str, Any]) -> None:
    save_model(model, str(tmp / WEIGHTS), metadata={"format": "pt", "step": str(step)})
    fsync_file(tmp / WEIGHTS)
    _maybe_fault("after_weights", step)
    torch.save(state, tmp / STATE)
    fsync_file(tmp / STATE)
    _maybe_fault("after_state", step)
    _write_manifest(tmp, step)
    for p in (tmp, *tmp.iterdir()):
        chmod_default(p)
    fsync_dir(tmp)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished temporary directory to ``final`` (replacing an older copy)."""
    if final.exists():
        _remove_tree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def prune_checkpoints(ckpt_root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``step_N`` directories."""
    dirs = step_dirs(ckpt_root)
    for _, path in dirs[: max(0, len(dirs) - keep)]:
        _remove_tree(path)
    if dirs:
        fsync_dir(ckpt_root)


def save_checkpoint(
    ckpt_root: str | Path, step: int, model: nn.Module, state: dict[str, Any], keep: int
) -> Path:
    """Write ``ckpt_root/step_<step>`` atomically, then keep only the newest ``keep``; its path."""
    if keep < 1:
        raise ConfigError(f"train.keep_checkpoints: invalid value {keep!r}; allowed: >= 1")
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}step_{step}-", dir=root))
    try:
        _write_contents(tmp, step, model, state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _maybe_fault("before_rename", step)
    final = root / f"step_{step}"
    _publish(tmp, final)
    prune_checkpoints(root, keep)
    return final


# -- verifying and loading ---------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {MANIFEST} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: {MANIFEST} is unreadable ({exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not {WEIGHTS, STATE} <= set(files):
        raise CheckpointError(f"{path}: {MANIFEST} does not list {WEIGHTS} and {STATE}")
    return manifest


def _check_file(path: Path, name: str, expected: Any) -> None:
    file = path / name
    if not isinstance(expected, dict) or not {"sha256", "size"} <= set(expected):
        raise CheckpointError(f"{path}: {MANIFEST} entry for {name} is malformed")
    if not file.is_file():
        raise CheckpointError(f"{path}: {name} is missing")
    size = file.stat().st_size
    if size != expected["size"]:
        raise CheckpointError(f"{path}: {name} has {size} bytes, manifest says {expected['size']}")
    if sha256_file(file) != expected["sha256"]:
        raise CheckpointError(f"{path}: {name} does not match its sha256 in {MANIFEST}")


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file against ``MANIFEST.json``; the manifest, or CheckpointError saying why."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    manifest = _read_manifest(path)
    for name, expected in manifest["files"].items():
        _check_file(path, name, expected)
    return manifest


def _quarantine(ckpt_root: Path, path: Path, reason: str) -> None:
    corrupt = ckpt_root / CORRUPT_DIR
    corrupt.mkdir(exist_ok=True)
    target, n = corrupt / path.name, 1
    while target.exists():
        target, n = corrupt / f"{path.name}.{n}", n + 1
    os.replace(path, target)
    fsync_dir(ckpt_root)
    warnings.warn(
        f"corrupt checkpoint {path.name} moved to {target}: {reason}; using the previous one",
        CorruptCheckpointWarning,
        stacklevel=3,
    )


def remove_temporaries(ckpt_root: str | Path) -> None:
    """Delete directories left behind by a save or a deletion that was interrupted."""
    root = Path(ckpt_root)
    if root.is_dir():
        for p in root.iterdir():
            if not p.name.startswith(TMP_PREFIX):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def latest_valid_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest ``step_N`` that verifies (corrupt ones are quarantined with a warning), or None."""
    root = Path(ckpt_root)
    remove_temporaries(root)
    for _, path in reversed(step_dirs(root)):
        try:
            verify_checkpoint(path)
        except CheckpointError as exc:
            _quarantine(root, path, str(exc))
            continue
        return path
    return None


def load_checkpoint(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Verify ``path``, load its weights into ``model`` in place, and return its training state."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        load_model(model, str(path / WEIGHTS), strict=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the model: {exc}") from None
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types; all mean "unusable state"
        raise CheckpointError(f"{path}: {STATE} cannot be loaded: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {STATE} holds {type(state).__name__}, not a dict")
    return state
