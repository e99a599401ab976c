"""Training-loop configuration (the ``train:`` section of a run file, DESIGN §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import BaseConfig, KindConfig, join, param
from ..errors import ConfigError


@dataclass(kw_only=True)
class OptimizerConfig(KindConfig):
    group: ClassVar[str] = "optimizer"
    lr: float = param(1.0e-3, doc="peak learning rate")


@dataclass(kw_only=True)
class ScheduleConfig(KindConfig):
    group: ClassVar[str] = "schedule"
    warmup_steps: int = param(0, doc="linear warm-up from 0 to the peak learning rate")


def _default_optimizer() -> OptimizerConfig:
    from .optim import AdamWConfig

    return AdamWConfig()


def _default_schedule() -> ScheduleConfig:
    from .schedule import CosineScheduleConfig

    return CosineScheduleConfig()


@dataclass(kw_only=True)
class TrainConfig(BaseConfig):
    steps: int = param(2000, doc="optimizer steps")
    batch_size: int = param(16, doc="sequences per micro-batch")
    grad_accum: int = param(1, doc="micro-batches per optimizer step")
    grad_clip: float | None = param(1.0, doc="max global grad norm; null disables clipping")
    optimizer: OptimizerConfig = param(factory=_default_optimizer, doc="optimizer")
    schedule: ScheduleConfig = param(factory=_default_schedule, doc="learning-rate schedule")
    log_every: int = param(10, doc="steps between metrics.jsonl records")
    eval_every: int = param(200, doc="steps between evaluations (0: only at the end)")
    checkpoint_every: int = param(500, doc="steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = param(3, doc="how many newest checkpoints to keep")
    max_consecutive_skips: int = param(
        3, doc="stop after more than this many consecutive non-finite steps"
    )
    seed: int = param(0, doc="seed for initialisation, dropout and data")
    threads: int | None = param(None, doc="torch CPU threads (null: torch's default)")
    time_limit_s: float | None = param(
        None,
        doc="stop after the step during which this many seconds of wall-clock training passed "
        "(then evaluate and checkpoint as at the end; not bit-reproducible); null: no limit",
    )

    def validate(self, path: str = "") -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{join(path, name)}: {getattr(self, name)} must be >= 1")
        for name in ("eval_every", "checkpoint_every", "max_consecutive_skips"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{join(path, name)}: {getattr(self, name)} must be >= 0")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ConfigError(
                f"{join(path, 'time_limit_s')}: invalid value {self.time_limit_s!r}; "
                "allowed: > 0 or null"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"{join(path, 'grad_clip')}: {self.grad_clip} must be > 0 or null")
        if self.schedule.warmup_steps > self.steps:
            raise ConfigError(
                f"{join(path, 'schedule.warmup_steps')}: {self.schedule.warmup_steps} exceeds "
                f"train.steps={self.steps}; allowed: 0..{self.steps}"
            )
