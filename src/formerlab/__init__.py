"""formerlab: Transformer efficiency techniques as small, composable, tested PyTorch parts.

import formerlab as fl
run = fl.load_config("configs/examples/code-lm-tiny.yaml", overrides=["model.depth=2"])
model = fl.build_model(run.model)
"""

from __future__ import annotations

from .config import BaseConfig, KindConfig
from .errors import (
    CheckpointError,
    ClaimError,
    ConfigError,
    DataError,
    FormerlabError,
    InputError,
    TrainingError,
)
from .models import build_model, from_pretrained, save_pretrained
from .registry import describe, list_registered, load_builtins
from .run_config import RunConfig, load_config
from .transforms import transform

load_builtins()

__version__ = "0.1.0"

__all__ = [
    "BaseConfig",
    "CheckpointError",
    "ClaimError",
    "ConfigError",
    "DataError",
    "FormerlabError",
    "InputError",
    "KindConfig",
    "RunConfig",
    "TrainingError",
    "build_model",
    "describe",
    "from_pretrained",
    "list_registered",
    "load_config",
    "save_pretrained",
    "transform",
]
