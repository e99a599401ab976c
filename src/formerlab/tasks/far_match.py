"""``far_match``: do two marked tokens in different groups carry the same symbol? (generated)

The "far-match" proxy proposed for FIT (Chen & Li, 2023, "FIT: Far-reaching Interleaved
Transformers", arXiv:2305.12689; claims.md §21). A sequence of ``seq_len`` tokens is cut into groups
of ``group_size``; every token is a filler drawn uniformly from ``filler_symbols`` ids
(``0 .. filler_symbols-1``), except two *marked* tokens (id ``filler_symbols + s`` for symbol ``s`` of
``num_symbols``) at uniform positions of two different groups. The label (balanced) is 1 when the two
marked symbols are equal, else 0 (the second one then uniform over the other symbols). Each marked
symbol alone is uniform whatever the label, so a model whose output reads one group (a local-only
model with ``cls`` pooling) is at chance (50 %). A model that *sums* per-group terms (local-only with
``mean`` pooling) cannot compare the symbols either, but can answer "match" when both lie in a chosen
set of ``s`` symbols: accuracy ``(s/K + 1 - s(s-1)/(K(K-1))) / 2``, at most about 64 % for K = 8.

Batches (``input_ids`` (B, seq_len) long, ``labels`` (B,) long) are pure functions of
``(seed, split, index)``; ``val`` batch ``i`` is the same for every run of the same seed. The loss is
cross-entropy of ``model(input_ids)`` (an ``encoder`` or ``fit`` encoder with a 2-class
``classifier`` head); the metric is ``accuracy``.
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
class FarMatchConfig(TaskConfig):
    """Match two marked tokens that lie in different groups."""

    kind: ClassVar[str] = "far_match"
    seq_len: int = param(128, doc="tokens per example (a multiple of group_size)")
    group_size: int = param(
        16, doc="tokens per group; the two marked tokens are in different groups"
    )
    num_symbols: int = param(8, doc="symbols the two marked tokens are drawn from")
    filler_symbols: int = param(
        1, doc="ids of the unmarked tokens (1: one blank id); vocab = filler_symbols + num_symbols"
    )

    def validate(self, path: str = "") -> None:
        check_positive(self, path, ("eval_batches", "group_size", "filler_symbols"))
        if self.num_symbols < 2:
            raise ConfigError(
                f"{join(path, 'num_symbols')}: invalid value {self.num_symbols!r}; allowed: >= 2"
            )
        if self.seq_len % self.group_size or self.seq_len < 2 * self.group_size:
            raise ConfigError(
                f"{join(path, 'seq_len')}: invalid value {self.seq_len!r}; allowed: a multiple of "
                f"group_size={self.group_size} with at least 2 groups"
            )


@TASK.register(FarMatchConfig)
class FarMatchTask(Task):
    """Binary classification whose answer needs information from two different groups."""

    config: FarMatchConfig
    model_kinds: ClassVar[tuple[str, ...]] = ("encoder", "fit")
    num_classes = 2

    def __init__(
        self, cfg: FarMatchConfig, *, seed: int = 0, workdir: str | Path | None = None
    ) -> None:
        super().__init__(cfg, seed=seed, workdir=workdir)
        self.vocab_size = cfg.filler_symbols + cfg.num_symbols
        self.num_groups = cfg.seq_len // cfg.group_size

    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        check_split(split, batch_size)
        g = batch_generator(self.seed, split, index)
        cfg, B, K = self.config, batch_size, self.config.num_symbols
        ids = torch.randint(0, cfg.filler_symbols, (B, cfg.seq_len), generator=g)
        first = torch.randint(0, self.num_groups, (B,), generator=g)
        other = (first + torch.randint(1, self.num_groups, (B,), generator=g)) % self.num_groups
        offsets = torch.randint(0, cfg.group_size, (B, 2), generator=g)
        pos = torch.stack([first, other], 1) * cfg.group_size + offsets  # (B, 2)
        labels = torch.randint(0, 2, (B,), generator=g)
        a = torch.randint(0, K, (B,), generator=g)
        b = (a + torch.randint(1, K, (B,), generator=g)) % K  # uniform over the other symbols
        b = torch.where(labels.bool(), a, b)
        ids.scatter_(1, pos, torch.stack([a, b], 1) + cfg.filler_symbols)
        return {"input_ids": ids, "labels": labels}

    def check_model(self, model_cfg: Any, path: str = "model") -> None:
        """The base checks, a 2-class ``classifier`` head, and (fit) mode ``encoder``."""
        super().check_model(model_cfg, path)
        if getattr(model_cfg, "mode", "encoder") != "encoder":
            raise ConfigError(
                f"{path}.mode: {model_cfg.mode!r} cannot train task 'far_match'; allowed: encoder"
            )
        head = getattr(model_cfg, "head", None)
        if getattr(head, "kind", None) != "classifier" or head.num_classes != 2:
            raise ConfigError(
                f"{path}.head: {getattr(head, 'kind', None)!r} with "
                f"{getattr(head, 'num_classes', None)!r} classes cannot train task 'far_match'; "
                "allowed: a classifier head with num_classes 2"
            )

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = model(batch["input_ids"])
        return nn.functional.cross_entropy(logits.float(), batch["labels"]), len(batch["labels"])

    @torch.no_grad()
    def metrics(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        logits = model(batch["input_ids"])
        return {"accuracy": float((logits.argmax(-1) == batch["labels"]).float().mean())}

    def data_info(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "task": "far_match",
            "seq_len": cfg.seq_len,
            "group_size": cfg.group_size,
            "num_symbols": cfg.num_symbols,
            "filler_symbols": cfg.filler_symbols,
            "vocab_size": self.vocab_size,
            "chance_accuracy": 0.5,
        }
