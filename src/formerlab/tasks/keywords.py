"""``keywords``: which keyword occurs intact among near-misses of every keyword? (generated)

A task where one attention layer needs many heads, written as a candidate for the
``wide_attention`` check (:mod:`formerlab.claims.wide_attention`). ``num_keywords`` keywords of ``keyword_length``
distinct symbols (of ``num_symbols``) are drawn once from ``data_seed``. An example is
``strings`` strings laid end to end at a random offset, in a random order, among uniformly random
filler symbols: one keyword *intact* (the label, uniform), and ``strings - 1`` *near-misses*, each a
uniformly chosen keyword (whatever the label) with one uniformly chosen position changed to another
symbol. The label is the keyword that occurs intact.

Why one layer needs heads here: a token can check the keyword that starts at it only by reading the
``keyword_length - 1`` symbols after it, each at its own offset; a head that reads one offset is an
exact read, a head spread over several offsets returns a mixture of their symbols. With ``h`` exact
reads a token sees ``h + 1`` of the ``L = keyword_length`` positions, and every near-miss matches all
the position sets that avoid its changed position: for any weighting of the ``(h+1)``-position
matches, a near-miss scores on average ``(L - h - 1) / L`` of an intact keyword (for L = 9, h = 4:
4/9). A model that adds such per-token evidence (mean pooling, then a linear classifier) therefore
answers wrong when the other keyword has enough more near-misses. With ``L - 1`` exact reads, or two
layers (the second reads what the first gathered further along), it can check the whole keyword,
and near-misses score nothing.

Measured (the 4-layer x 4-head, 64-wide ``deep-4x4`` encoder, batch 32, AdamW lr 1e-3): it stays at
68-72 % from 250 to 3,000 steps with 6 strings in 64 tokens (learned or rotary positions), while
counting 5-position matches scores 82 % and an exact check 100 %; with 14 strings in 128 tokens
(the defaults) 62-64 % after 1,200 steps, against 72 % and 100 %. Models of this size do not learn
the whole-keyword check in a CPU budget, which is why the ``wide_attention`` check does not use it
(reproduce: ``OMP_NUM_THREADS=1 python benchmarks/wide_deep_curve.py --task keywords``).

Tokens are the symbols ``0 .. num_symbols-1`` (no PAD, no CLS: every position is real). Batches
(``input_ids`` (B, seq_len) long, ``labels`` (B,) long) are pure functions of ``(seed, split,
index)``, drawn without end, so training never repeats an example. The loss is cross-entropy of
``model(input_ids)`` (an encoder with a ``classifier`` head of ``num_keywords`` classes); metrics are
``accuracy`` and ``majority_baseline`` (the most frequent label's share of the same examples).
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
from .classification import check_min
from .lm import check_positive, check_split


@dataclass(kw_only=True)
class KeywordsConfig(TaskConfig):
    """Find the keyword that occurs intact among near-misses (one symbol changed) of every keyword."""

    kind: ClassVar[str] = "keywords"
    seq_len: int = param(128, doc="tokens per example (>= strings x keyword_length)")
    num_symbols: int = param(16, doc="symbols of keywords and filler (the vocabulary)")
    num_keywords: int = param(2, doc="keywords, i.e. classes")
    keyword_length: int = param(9, doc="distinct symbols per keyword (<= num_symbols)")
    strings: int = param(14, doc="strings per example: 1 intact keyword + strings - 1 near-misses")
    data_seed: int = param(0, doc="seed of the keywords (the training seed draws the examples)")

    def validate(self, path: str = "") -> None:
        check_positive(self, path, ("eval_batches", "strings"))
        for name in ("num_keywords", "keyword_length", "num_symbols"):
            check_min(path, name, getattr(self, name), 2)
        if self.keyword_length > self.num_symbols:
            raise ConfigError(
                f"{join(path, 'keyword_length')}: invalid value {self.keyword_length!r}; allowed: "
                f"<= num_symbols={self.num_symbols} (a keyword's symbols are distinct)"
            )
        if self.strings * self.keyword_length > self.seq_len:
            raise ConfigError(
                f"{join(path, 'seq_len')}: invalid value {self.seq_len!r}; allowed: >= strings x "
                f"keyword_length = {self.strings * self.keyword_length}"
            )


def draw_keywords(cfg: KeywordsConfig) -> torch.Tensor:
    """(num_keywords, keyword_length) keywords of distinct symbols from ``data_seed``; any two
    differ in at least two positions, so a near-miss of one is never another keyword."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    keywords: list[torch.Tensor] = []
    while len(keywords) < cfg.num_keywords:
        word = torch.randperm(cfg.num_symbols, generator=g)[: cfg.keyword_length]
        if all(int((word != other).sum()) >= 2 for other in keywords):
            keywords.append(word)
    return torch.stack(keywords)


@TASK.register(KeywordsConfig)
class KeywordsTask(Task):
    """Classify which keyword occurs intact; near-misses of every keyword surround it."""

    config: KeywordsConfig
    model_kinds: ClassVar[tuple[str, ...]] = ("encoder",)
    num_classes: int

    def __init__(
        self, cfg: KeywordsConfig, *, seed: int = 0, workdir: str | Path | None = None
    ) -> None:
        super().__init__(cfg, seed=seed, workdir=workdir)
        self.vocab_size = cfg.num_symbols
        self.num_classes = cfg.num_keywords
        self.keywords = draw_keywords(cfg)

    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        check_split(split, batch_size)
        g = batch_generator(self.seed, split, index)
        cfg, B, S, L = self.config, batch_size, self.config.strings, self.config.keyword_length
        labels = torch.randint(0, cfg.num_keywords, (B,), generator=g)
        which = torch.randint(0, cfg.num_keywords, (B, S), generator=g)
        which[:, 0] = labels  # string 0 is the intact one, the others near-misses
        strings = self.keywords[which]  # (B, S, L)
        spot = torch.randint(0, L, (B, S), generator=g)
        shift = torch.randint(1, cfg.num_symbols, (B, S), generator=g)  # never the same symbol
        changed = (strings.gather(2, spot[..., None])[..., 0] + shift) % cfg.num_symbols
        near = strings.scatter(2, spot[..., None], changed[..., None])
        strings = torch.cat([strings[:, :1], near[:, 1:]], dim=1)
        order = torch.rand(B, S, generator=g).argsort(dim=1)  # lay the strings out shuffled
        laid = strings.gather(1, order[..., None].expand(B, S, L)).reshape(B, S * L)
        ids = torch.randint(0, cfg.num_symbols, (B, cfg.seq_len), generator=g)
        start = torch.randint(0, cfg.seq_len - S * L + 1, (B,), generator=g)
        cols = start[:, None] + torch.arange(S * L)
        ids.scatter_(1, cols, laid)
        return {"input_ids": ids, "labels": labels}

    def check_model(self, model_cfg: Any, path: str = "model") -> None:
        """The base checks and a ``classifier`` head with ``num_keywords`` classes."""
        super().check_model(model_cfg, path)
        head = getattr(model_cfg, "head", None)
        if getattr(head, "kind", None) != "classifier" or head.num_classes != self.num_classes:
            raise ConfigError(
                f"{path}.head: {getattr(head, 'kind', None)!r} with "
                f"{getattr(head, 'num_classes', None)!r} classes cannot train task 'keywords'; "
                f"allowed: a classifier head with num_classes {self.num_classes}"
            )

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = model(batch["input_ids"])
        return nn.functional.cross_entropy(logits.float(), batch["labels"]), len(batch["labels"])

    @torch.no_grad()
    def metrics(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        labels = batch["labels"]
        logits = model(batch["input_ids"])
        majority = torch.bincount(labels, minlength=self.num_classes).max()
        return {
            "accuracy": float((logits.argmax(-1) == labels).float().mean()),
            "majority_baseline": float(majority) / len(labels),
        }

    def evaluate(self, model: nn.Module, batch_size: int, split: str = "val") -> dict[str, float]:
        """``val_loss`` (of ``split``), accuracy and majority baseline over ``eval_batches`` fixed
        batches of ``split``, each over all their examples."""
        was_training = model.training
        model.eval()
        totals = {"loss": 0.0, "correct": 0.0, "labels": torch.zeros(self.num_classes)}
        with torch.no_grad():
            for i in range(self.config.eval_batches):
                batch = self.batch(split, i, batch_size)
                logits = model(batch["input_ids"]).float()
                labels = batch["labels"]
                loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
                totals["loss"] += float(loss)
                totals["correct"] += float((logits.argmax(-1) == labels).sum())
                totals["labels"] += torch.bincount(labels, minlength=self.num_classes)
        model.train(was_training)
        n = float(totals["labels"].sum())
        return {
            "val_loss": totals["loss"] / n,
            "accuracy": totals["correct"] / n,
            "majority_baseline": float(totals["labels"].max()) / n,
        }

    def data_info(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "task": "keywords",
            "seq_len": cfg.seq_len,
            "num_symbols": cfg.num_symbols,
            "keyword_length": cfg.keyword_length,
            "strings": cfg.strings,
            "keywords": self.keywords.tolist(),
            "vocab_size": self.vocab_size,
            "chance_accuracy": 1.0 / cfg.num_keywords,
        }
