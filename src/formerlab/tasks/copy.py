"""``copy``: a synthetic copy task for fast tests and sanity checks.

A sequence is ``x_1 .. x_L, SEP, x_1 .. x_L`` with ``x_i`` uniform over ``num_symbols`` symbols
(ids ``0..num_symbols-1``; ``SEP`` = ``num_symbols``, so ``vocab_size = num_symbols + 1``). The model
reads the first ``2L`` tokens (the last copied symbol is only a target), so ``2 * length <= seq_len``;
``length: null`` means ``seq_len // 2``, the longest copy that fits. Only the copied part is scored:
``labels`` is ``-100`` on the first ``L`` positions and ``x_1 .. x_L`` from the separator on.
Metrics (teacher-forced argmax over the copied part): ``token_accuracy`` and ``sequence_accuracy``
(every copied symbol right). Chance level is ``1 / num_symbols`` per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import join, param
from ..errors import ConfigError
from ..registry import TASK
from .base import Task, TaskConfig, batch_generator
from .lm import check_positive, check_split


@dataclass(kw_only=True)
class CopyTaskConfig(TaskConfig):
    """Copy a random symbol string after a separator."""

    kind: ClassVar[str] = "copy"
    num_symbols: int = param(16, doc="alphabet of the copied symbols (vocab = num_symbols + 1)")
    length: int | None = param(
        None, doc="symbols to copy; the model reads 2*length tokens; null: seq_len // 2"
    )

    def validate(self, path: str = "") -> None:
        check_positive(self, path, ("eval_batches",))
        if self.seq_len < 2:
            raise ConfigError(
                f"{join(path, 'seq_len')}: invalid value {self.seq_len!r}; allowed: >= 2"
            )
        if self.num_symbols < 2:
            raise ConfigError(
                f"{join(path, 'num_symbols')}: invalid value {self.num_symbols!r}; allowed: >= 2"
            )
        if self.length is not None and not 1 <= self.length <= self.seq_len // 2:
            raise ConfigError(
                f"{join(path, 'length')}: invalid value {self.length!r}; allowed: null or "
                f"1..{self.seq_len // 2} (2*length <= seq_len={self.seq_len})"
            )


@TASK.register(CopyTaskConfig)
class CopyTask(Task):
    """Synthetic copy: learnable only by attending back ``length + 1`` positions."""

    config: CopyTaskConfig

    def __init__(
        self, cfg: CopyTaskConfig, *, seed: int = 0, workdir: str | Path | None = None
    ) -> None:
        super().__init__(cfg, seed=seed, workdir=workdir)
        self.length = cfg.length if cfg.length is not None else cfg.seq_len // 2
        self.sep_id = cfg.num_symbols
        self.vocab_size = cfg.num_symbols + 1

    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        check_split(split, batch_size)
        g = batch_generator(self.seed, split, index)
        length = self.length
        symbols = torch.randint(0, self.config.num_symbols, (batch_size, length), generator=g)
        sep = torch.full((batch_size, 1), self.sep_id, dtype=torch.long)
        sequence = torch.cat([symbols, sep, symbols], dim=1)  # (B, 2L+1)
        labels = torch.full((batch_size, 2 * length), -100, dtype=torch.long)
        labels[:, length:] = symbols  # position L (the separator) predicts x_1, ...
        return {"input_ids": sequence[:, :-1].contiguous(), "labels": labels}

    @torch.no_grad()
    def metrics(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        labels = batch["labels"]
        scored = labels != -100
        hits = (logits.argmax(dim=-1) == labels) & scored
        return {
            "token_accuracy": float(hits.sum() / scored.sum()),
            "sequence_accuracy": float((hits.sum(1) == scored.sum(1)).float().mean()),
        }

    def data_info(self) -> dict[str, Any]:
        return {
            "task": "copy",
            "num_symbols": self.config.num_symbols,
            "length": self.length,
            "sep_id": self.sep_id,
            "vocab_size": self.vocab_size,
            "input_len": 2 * self.length,
            "chance_token_accuracy": 1.0 / self.config.num_symbols,
        }
