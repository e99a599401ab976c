"""A run file: ``model`` + ``task`` + ``train`` (DESIGN §5), loaded with ``base:`` and overrides."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import BaseConfig, apply_overrides, load_with_base, param
from .models.base import ModelConfig
from .tasks.base import TaskConfig
from .train.config import TrainConfig


@dataclass(kw_only=True)
class RunConfig(BaseConfig):
    model: ModelConfig = param(doc="the model to build (a kind or a preset name)")
    task: TaskConfig = param(doc="data, loss and metrics")
    train: TrainConfig = param(factory=TrainConfig, doc="the training loop")

    def validate(self, path: str = "") -> None:
        self.model.check_task(self.task, "model")


def resolve_presets(data: dict[str, Any]) -> dict[str, Any]:
    """``model: gpt-small-cpu`` (or ``model: {preset: gpt-small-cpu, depth: 2}``) → the full dict."""
    from .models.presets import preset_dict

    model = data.get("model")
    if isinstance(model, str):
        data = {**data, "model": preset_dict(model, "model")}
    elif isinstance(model, dict) and "preset" in model:
        rest = {k: v for k, v in model.items() if k != "preset"}
        from .config import deep_merge

        data = {**data, "model": deep_merge(preset_dict(model["preset"], "model.preset"), rest)}
    return data


def load_config(source: str | Path | dict[str, Any], overrides: Iterable[str] = ()) -> RunConfig:
    """Load a run file (YAML/JSON path or dict), resolve ``base:`` and presets, apply overrides."""
    data = load_with_base(source) if isinstance(source, str | Path) else dict(source)
    data = resolve_presets(data)
    data = apply_overrides(data, overrides)
    return RunConfig.from_dict(data)
