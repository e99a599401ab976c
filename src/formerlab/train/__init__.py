"""Training: optimizers, learning-rate schedules, crash-safe checkpoints and the training loop.

Importing this package registers the built-in optimizers (``adamw``, ``muon``) and schedules
(``constant``, ``linear``, ``cosine``).
"""

from __future__ import annotations

from .checkpoint import latest_valid_checkpoint, load_checkpoint, save_checkpoint
from .config import OptimizerConfig, ScheduleConfig, TrainConfig
from .muon import MuonConfig
from .optim import AdamWConfig, build_optimizer
from .schedule import (
    ConstantScheduleConfig,
    CosineScheduleConfig,
    LinearScheduleConfig,
    build_schedule,
    lr_factor,
)
from .trainer import read_metrics, train

__all__ = [
    "AdamWConfig",
    "ConstantScheduleConfig",
    "CosineScheduleConfig",
    "LinearScheduleConfig",
    "MuonConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "build_optimizer",
    "build_schedule",
    "latest_valid_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "read_metrics",
    "save_checkpoint",
    "train",
]
