"""Reading a trained model back: from a run directory (newest valid checkpoint) or a
``save_pretrained`` directory, with the tokenizer saved beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .config import read_file
from .errors import CheckpointError


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: Any
    run: Any = None  # RunConfig for run directories
    step: int | None = None  # checkpoint step for run directories


def load_trained(directory: str | Path) -> Loaded:
    """Model + tokenizer from a run directory or a ``save_pretrained`` directory (local paths only)."""
    from .models import build_model, from_pretrained
    from .run_config import load_config
    from .tokenizers import ByteTokenizer, ByteTokenizerConfig, load_tokenizer
    from .train import latest_valid_checkpoint, load_checkpoint

    directory = Path(directory)
    if not (directory / "config.yaml").is_file():
        raise CheckpointError(
            f"{directory}: no config.yaml; expected a run directory (formerlab train --out) "
            "or a save_pretrained directory"
        )
    tokenizer = load_tokenizer(directory) or ByteTokenizer(ByteTokenizerConfig())
    if "model" not in read_file(directory / "config.yaml"):
        return Loaded(from_pretrained(directory), tokenizer)
    run = load_config(directory / "config.yaml")
    ckpt = latest_valid_checkpoint(directory / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"{directory}: no valid checkpoint under checkpoints/")
    model = build_model(run.model)
    state = load_checkpoint(ckpt, model)
    return Loaded(model.eval(), tokenizer, run, int(state.get("step", 0)))
