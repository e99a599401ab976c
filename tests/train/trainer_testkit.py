"""Tasks and configs for the trainer tests, importable from subprocesses too.

``python tests/train/trainer_testkit.py CONFIG --out DIR [--resume]`` registers the test tasks and then
runs ``python -m formerlab.train``'s ``main`` — the real trainer in a real process that tests can kill.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from formerlab.config import param
from formerlab.registry import TASK
from formerlab.tasks.base import Task, TaskConfig, batch_generator

VOCAB = 16


@dataclass(kw_only=True)
class KitCopyConfig(TaskConfig):
    kind: ClassVar[str] = "trainer_kit_copy"
    seq_len: int = param(16, doc="tokens per example")
    eval_batches: int = param(2, doc="validation batches")


@dataclass(kw_only=True)
class KitNaNConfig(KitCopyConfig):
    kind: ClassVar[str] = "trainer_kit_nan"
    nan_batches: list[int] = param(factory=list, doc="train micro-batch indices whose loss is NaN")


class KitCopyTask(Task):
    """Second half of each sequence repeats the first; random (shuffled) tokens per batch index."""

    vocab_size = VOCAB

    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        g = batch_generator(self.seed, split, index)
        half = self.config.seq_len // 2
        first = torch.randint(0, VOCAB, (batch_size, half), generator=g)
        ids = torch.cat([first, first], dim=1)
        labels = ids.roll(-1, dims=1)
        labels[:, : half - 1] = -100
        labels[:, -1] = -100
        return {"input_ids": ids, "labels": labels, "index": torch.tensor(index)}

    def data_info(self) -> dict[str, Any]:
        return {"vocab_size": VOCAB, "seq_len": self.config.seq_len, "seed": self.seed}

    def metrics(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logits = model(batch["input_ids"])
        mask = batch["labels"] != -100
        hits = (logits.argmax(-1) == batch["labels"]) & mask
        # sampling draws from the global RNG, as generation-based metrics do
        sampled = torch.multinomial(logits.softmax(-1).flatten(0, 1), 1).view_as(mask)
        sample_hits = (sampled == batch["labels"]) & mask
        n = float(mask.sum())
        return {"accuracy": float(hits.sum()) / n, "sample_accuracy": float(sample_hits.sum()) / n}


class KitNaNTask(KitCopyTask):
    """The copy task whose loss is NaN on the chosen train micro-batches."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, int]:
        loss, count = super().loss(model, batch)
        if int(batch["index"]) in self.config.nan_batches:
            loss = loss * float("nan")
        return loss, count


def register() -> None:
    unregister()
    TASK.register(KitCopyConfig)(KitCopyTask)
    TASK.register(KitNaNConfig)(KitNaNTask)


def unregister() -> None:
    TASK.unregister(KitCopyConfig.kind)
    TASK.unregister(KitNaNConfig.kind)


def tiny_run(**train: Any) -> dict[str, Any]:
    """A run dict: a 2-block decoder with dropout on the shuffled copy task, a few seconds at most."""
    model = {
        "kind": "decoder_lm",
        "vocab_size": 32,
        "dim": 32,
        "depth": 2,
        "num_heads": 2,
        "max_seq_len": 32,
        "dropout": 0.1,
    }
    base = {
        "steps": 12,
        "batch_size": 4,
        "grad_accum": 2,
        "log_every": 2,
        "eval_every": 4,
        "checkpoint_every": 4,
        "keep_checkpoints": 5,
        "threads": 1,
        "optimizer": {"kind": "adamw", "lr": 3e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
    }
    return {"model": model, "task": {"kind": "trainer_kit_copy"}, "train": {**base, **train}}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from formerlab.train.__main__ import main

    register()
    sys.exit(main(sys.argv[1:]))
