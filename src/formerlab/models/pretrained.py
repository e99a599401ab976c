"""``save_pretrained`` / ``from_pretrained``: a directory with config.yaml + model.safetensors
(+ the tokenizer, when one is given). Files are written to temporary names and renamed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ..config import read_file
from ..errors import CheckpointError
from ..fileio import atomic_write, atomic_write_text


def save_pretrained(model: nn.Module, directory: str | Path, tokenizer: Any = None) -> Path:
    """Write ``config.yaml`` and ``model.safetensors`` (tied weights stored once) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.safetensors", lambda p: save_model(model, str(p)))
    text = yaml.safe_dump(model.config.to_dict(), sort_keys=False)
    atomic_write_text(directory / "config.yaml", text)
    if tokenizer is not None:
        from ..tokenizers import save_tokenizer

        save_tokenizer(tokenizer, directory)
    return directory


def from_pretrained(directory: str | Path) -> nn.Module:
    """Rebuild the model saved in ``directory`` (a local path) and load its weights."""
    from . import build_model

    directory = Path(directory)
    if not (directory / "config.yaml").is_file():
        raise CheckpointError(f"{directory}: no config.yaml (not a formerlab model directory)")
    model = build_model(read_file(directory / "config.yaml"))
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        load_model(model, str(weights))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{weights}: cannot load: {exc}") from None
    return model.eval()
