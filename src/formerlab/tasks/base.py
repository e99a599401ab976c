"""The task contract: data, loss and metrics for one kind of problem.

Batches are pure functions of ``(seed, split, index)``, so the "data position" of a run is just the
index of the next micro-batch: resuming needs no iterator state, and any batch can be regenerated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import KindConfig, param


@dataclass(kw_only=True)
class TaskConfig(KindConfig):
    group: ClassVar[str] = "task"
    seq_len: int = param(256, doc="tokens per training example")
    eval_batches: int = param(8, doc="validation batches per evaluation")


class Task:
    """Base class of registered tasks.

    Subclasses set ``vocab_size`` and implement :meth:`batch`; the default :meth:`loss` is next-token
    cross-entropy over ``batch["labels"]`` (``-100`` = ignored), the default :meth:`evaluate` is the
    mean of that loss over ``eval_batches`` fixed validation batches plus :meth:`metrics`.
    """

    #: model kinds this task can train (checked before any compute)
    model_kinds: ClassVar[tuple[str, ...]] = ("decoder_lm",)
    vocab_size: int
    tokenizer: Any = None

    def __init__(
        self, cfg: TaskConfig, *, seed: int = 0, workdir: str | Path | None = None
    ) -> None:
        self.config = cfg
        self.seed = seed
        self.workdir = Path(workdir) if workdir is not None else None

    # -- data ---------------------------------------------------------------------------------
    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        """The ``index``-th batch of ``split`` ("train" | "val"): a pure function of its arguments."""
        raise NotImplementedError

    def data_info(self) -> dict[str, Any]:
        """Facts recorded in the run (sizes, sha256 manifest, ...)."""
        return {}

    # -- checks -------------------------------------------------------------------------------
    def check_model(self, model_cfg: Any, path: str = "model") -> None:
        """Raise ConfigError if the model cannot run this task (kind, vocab, sequence length)."""
        from ..errors import ConfigError

        kind = getattr(model_cfg, "kind", None)
        interface = getattr(model_cfg, "interface", None)  # e.g. looped: an encoder's interface
        if kind not in self.model_kinds and interface not in self.model_kinds:
            raise ConfigError(
                f"{path}.kind: {kind!r} cannot train task {self.config.kind!r}; "
                f"allowed: {', '.join(self.model_kinds)}"
            )
        if model_cfg.vocab_size < self.vocab_size:
            raise ConfigError(
                f"{path}.vocab_size: {model_cfg.vocab_size} is smaller than the task's "
                f"vocabulary ({self.vocab_size}); allowed: >= {self.vocab_size}"
            )
        if model_cfg.max_seq_len < self.config.seq_len:
            raise ConfigError(
                f"{path}.max_seq_len: {model_cfg.max_seq_len} is shorter than "
                f"task.seq_len={self.config.seq_len}; allowed: >= {self.config.seq_len}"
            )

    # -- objective ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Mean loss over counted targets, and how many targets were counted."""
        logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        labels = batch["labels"]
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100
        )
        return loss, int((labels != -100).sum())

    def metrics(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Extra per-batch metrics (averaged over the validation batches)."""
        return {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        totals: dict[str, float] = {}
        n = self.config.eval_batches
        for i in range(n):
            batch = self.batch("val", i, batch_size)
            loss, _ = self.loss(model, batch)
            totals["val_loss"] = totals.get("val_loss", 0.0) + float(loss) / n
            for k, v in self.metrics(model, batch).items():
                totals[k] = totals.get(k, 0.0) + float(v) / n
        model.train(was_training)
        return totals


def batch_generator(seed: int, split: str, index: int) -> torch.Generator:
    """A torch.Generator seeded from (seed, split, index) — the source of every random batch."""
    split_code = {"train": 1, "val": 2, "test": 3}[split]
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + split_code) * 2_147_483_647 + index)
    return g
