"""Learning-rate schedules: ``constant``, ``linear`` and ``cosine``, each after a linear warm-up.

A schedule is stateless: the learning-rate factor of a step is a pure function of
``(config, step, total_steps)``, so resuming a run needs no scheduler state. Steps are counted from 0
(the first optimizer step is step 0):

* warm-up, ``step < warmup_steps``: ``(step + 1) / warmup_steps`` — the first step already learns and
  step ``warmup_steps - 1`` reaches the peak;
* decay, ``step >= warmup_steps``: progress ``p = (step - warmup_steps) / (total_steps - warmup_steps)``
  runs from 0 at the end of warm-up to 1 at ``step == total_steps`` (one past the last step), where
  the factor equals ``min_lr_ratio``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..config import join, param
from ..errors import ConfigError
from ..registry import SCHEDULE
from .config import ScheduleConfig


def _check_ratio(value: float, path: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{path}: invalid value {value!r}; allowed: 0.0 <= min_lr_ratio <= 1.0")


def _check_warmup(cfg: ScheduleConfig, path: str) -> None:
    if cfg.warmup_steps < 0:
        raise ConfigError(
            f"{join(path, 'warmup_steps')}: invalid value {cfg.warmup_steps!r}; allowed: >= 0"
        )


@dataclass(kw_only=True)
class ConstantScheduleConfig(ScheduleConfig):
    kind: ClassVar[str] = "constant"

    def validate(self, path: str = "") -> None:
        _check_warmup(self, path)


@dataclass(kw_only=True)
class LinearScheduleConfig(ScheduleConfig):
    kind: ClassVar[str] = "linear"
    min_lr_ratio: float = param(0.0, doc="final learning rate as a fraction of the peak")

    def validate(self, path: str = "") -> None:
        _check_warmup(self, path)
        _check_ratio(self.min_lr_ratio, join(path, "min_lr_ratio"))


@dataclass(kw_only=True)
class CosineScheduleConfig(ScheduleConfig):
    kind: ClassVar[str] = "cosine"
    min_lr_ratio: float = param(0.1, doc="final learning rate as a fraction of the peak")

    def validate(self, path: str = "") -> None:
        _check_warmup(self, path)
        _check_ratio(self.min_lr_ratio, join(path, "min_lr_ratio"))


class Schedule:
    """Base class: :meth:`factor` multiplies the peak learning rate; subclasses define :meth:`decay`."""

    def __init__(self, cfg: ScheduleConfig, *, total_steps: int) -> None:
        if total_steps < 1:
            raise ConfigError(f"train.steps: invalid value {total_steps!r}; allowed: >= 1")
        if cfg.warmup_steps > total_steps:
            raise ConfigError(
                f"train.schedule.warmup_steps: invalid value {cfg.warmup_steps!r}; "
                f"allowed: 0..{total_steps} (train.steps)"
            )
        self.config = cfg
        self.total_steps = total_steps

    def factor(self, step: int) -> float:
        """The learning-rate multiplier of optimizer step ``step`` (0-based)."""
        warmup = self.config.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        span = self.total_steps - warmup
        progress = 1.0 if span <= 0 else min(1.0, (step - warmup) / span)
        return self.decay(progress)

    def decay(self, progress: float) -> float:
        """The factor after warm-up, at ``progress`` in [0, 1]."""
        raise NotImplementedError


@SCHEDULE.register(ConstantScheduleConfig)
class ConstantSchedule(Schedule):
    """Constant learning rate after warm-up."""

    def decay(self, progress: float) -> float:
        return 1.0


@SCHEDULE.register(LinearScheduleConfig)
class LinearSchedule(Schedule):
    """Linear decay from the peak to ``min_lr_ratio`` times the peak."""

    def decay(self, progress: float) -> float:
        floor = self.config.min_lr_ratio
        return 1.0 - (1.0 - floor) * progress


@SCHEDULE.register(CosineScheduleConfig)
class CosineSchedule(Schedule):
    """Half-cosine decay from the peak to ``min_lr_ratio`` times the peak (Loshchilov & Hutter)."""

    def decay(self, progress: float) -> float:
        floor = self.config.min_lr_ratio
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(cfg: ScheduleConfig | dict | str, total_steps: int) -> Schedule:
    """The schedule object of ``cfg`` for a run of ``total_steps`` optimizer steps."""
    return SCHEDULE.build(cfg, total_steps=total_steps)


def lr_factor(cfg: ScheduleConfig | dict | str, step: int, total_steps: int) -> float:
    """The learning-rate multiplier of 0-based ``step`` in a run of ``total_steps`` steps."""
    return build_schedule(cfg, total_steps).factor(step)
