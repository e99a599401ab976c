"""Training progress: a rich progress bar on a terminal, plain log lines everywhere else.

The bar (loss, tokens/s, ETA) is used when stdout is a TTY and the ``CI`` environment variable is not
``"true"``; otherwise each log step prints one line, so logs in files and CI stay readable.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def use_bar(progress: bool | None) -> bool:
    """Resolve ``progress=None`` (auto): a bar only on an interactive terminal outside CI."""
    if progress is not None:
        return progress
    return sys.stdout.isatty() and os.environ.get("CI", "").lower() != "true"


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _fmt_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_record(record: dict[str, Any], total_steps: int) -> str:
    """One human-readable line for a metrics record."""
    if "val_loss" in record:
        rest = " | ".join(f"{k} {_fmt_value(v)}" for k, v in record.items() if k != "step")
        return f"eval step {record['step']}/{total_steps} | {rest}"
    line = (
        f"step {record['step']}/{total_steps} | loss {_fmt_value(record.get('loss'))} | "
        f"lr {record.get('lr', 0.0):.3e} | {record.get('tokens_per_s', 0.0):,.0f} tok/s"
    )
    if record.get("skipped_steps"):
        line += f" | skipped {record['skipped_steps']}"
    return line


class PlainProgress:
    """Plain lines on stdout: one per log step and evaluation, plus messages."""

    def __init__(self, total_steps: int, start_step: int = 0) -> None:
        self.total_steps = total_steps
        self.start_step = start_step

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()

    def advance(self, step: int) -> None:
        """Called after every optimizer step (no output in plain mode)."""

    def record(self, record: dict[str, Any], eta_s: float | None = None) -> None:
        line = format_record(record, self.total_steps)
        if eta_s is not None:
            line += f" | eta {_fmt_duration(eta_s)}"
        print(line, flush=True)

    def message(self, text: str) -> None:
        print(text, flush=True)


class RichProgress(PlainProgress):
    """A live rich bar showing the step, loss, tokens/s and ETA; evaluations print above it."""

    def __init__(self, total_steps: int, start_step: int = 0) -> None:
        super().__init__(total_steps, start_step)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        self._task = self._bar.add_task(
            "train", total=total_steps, completed=start_step, loss="n/a", tps="n/a"
        )

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def advance(self, step: int) -> None:
        self._bar.update(self._task, completed=step)

    def record(self, record: dict[str, Any], eta_s: float | None = None) -> None:
        if "val_loss" in record:
            self._bar.console.print(format_record(record, self.total_steps), highlight=False)
            return
        tps = record.get("tokens_per_s")
        self._bar.update(
            self._task,
            loss=_fmt_value(record.get("loss")),
            tps=f"{tps:,.0f}" if tps is not None else "n/a",
        )

    def message(self, text: str) -> None:
        self._bar.console.print(text, markup=False, highlight=False)


def make_progress(progress: bool | None, total_steps: int, start_step: int = 0) -> PlainProgress:
    """A :class:`RichProgress` or :class:`PlainProgress` (``progress=None``: decide by terminal)."""
    cls = RichProgress if use_bar(progress) else PlainProgress
    return cls(total_steps, start_step)
