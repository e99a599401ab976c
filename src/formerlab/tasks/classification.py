"""Sequence classification: the shared base of the Long Range Arena-style tasks (``listops``,
``pathfinder``, ...).

A subclass says how to :meth:`~ClassificationTask.generate` a pool of distinct examples from a numpy
generator; each example is a short sequence of *symbols* (``0 .. num_symbols-1``) and a class label.
The pool is generated once from ``data_seed`` (not the training seed, so every training seed sees the
same data) and cut in order into train / val / test (``train_size``, ``val_size``, ``test_size``),
so the splits share no example. The pool is cached on disk (:func:`cache_root`) and reused.

Token ids: ``PAD_ID`` = 0, ``CLS_ID`` = 1, symbol ``s`` -> ``s + 2``. An example becomes
``CLS, s_1+2, .., s_L+2, PAD, ..`` padded to ``seq_len``; ``attention_mask`` is True on real tokens.
Batches (``input_ids`` (B, T) long, ``attention_mask`` (B, T) bool, ``labels`` (B,) long):

- ``train``: batch ``i`` takes positions ``i*B .. i*B+B-1`` of an endless stream that walks through
  the train split in a fresh permutation per epoch (epoch ``e`` permuted with
  ``batch_generator(seed, "train", e)``) — every example once per epoch, a pure function of the index;
- ``val`` / ``test``: examples in their fixed order, ``i*B ..`` (wrapping around at the end).

The loss is cross-entropy of ``model(input_ids, attention_mask)`` (an encoder with a ``classifier``
head gives (B, num_classes)). Metrics: ``accuracy`` and ``majority_baseline``, the accuracy of always
answering the most frequent *training* class, on the same examples.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..config import join, param
from ..errors import ConfigError, DataError, InputError
from ..fileio import atomic_write
from .base import Task, TaskConfig, batch_generator
from .lm import check_positive

PAD_ID = 0
CLS_ID = 1
FIRST_SYMBOL_ID = 2
SPLITS = ("train", "val", "test")
CACHE_ENV = "FORMERLAB_CACHE"


def cache_root() -> Path:
    """Where generated datasets live: ``$FORMERLAB_CACHE``, else ``$XDG_CACHE_HOME/formerlab``,
    else ``~/.cache/formerlab``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "formerlab"


def check_min(
    path: str, name: str, value: float | None, low: float, nullable: bool = False
) -> None:
    """ConfigError unless ``value >= low`` (or, where ``nullable``, null)."""
    if value is None and nullable:
        return
    if value is None or value < low:
        allowed = f"null or >= {low}" if nullable else f">= {low}"
        raise ConfigError(f"{join(path, name)}: invalid value {value!r}; allowed: {allowed}")


@dataclass(kw_only=True)
class ClassificationTaskConfig(TaskConfig):
    """Fields shared by the generated sequence-classification tasks."""

    data_seed: int = param(0, doc="seed of the generated dataset (the training seed orders it)")
    train_size: int = param(10_000, doc="training examples")
    val_size: int = param(1_000, doc="validation examples")
    test_size: int = param(1_000, doc="test examples")
    cache: bool = param(True, doc="keep the generated dataset on disk and reuse it")

    def validate(self, path: str = "") -> None:
        names = ("seq_len", "eval_batches", "train_size", "val_size", "test_size")
        check_positive(self, path, names)
        check_min(path, "data_seed", self.data_seed, 0)


@dataclass(frozen=True)
class Examples:
    """Variable-length symbol sequences stored end to end: example ``i`` is
    ``symbols[offsets[i]:offsets[i+1]]`` with class ``labels[i]``."""

    symbols: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_sequences(cls, sequences: list[np.ndarray], labels: list[int]) -> Examples:
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.concatenate(sequences) if sequences else np.zeros(0, np.int64)
        return cls(symbols_array(flat), offsets, np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        return self.symbols[self.offsets[i] : self.offsets[i + 1]]

    def take(self, start: int, stop: int) -> Examples:
        """Examples ``start .. stop-1`` (symbols shared, offsets rebased)."""
        offsets = self.offsets[start : stop + 1]
        symbols = self.symbols[offsets[0] : offsets[-1]]
        return Examples(symbols, offsets - offsets[0], self.labels[start:stop])

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for part in (self.symbols, self.offsets, self.labels):
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()


def symbols_array(values: np.ndarray) -> np.ndarray:
    """Non-negative ``values`` in the smallest integer dtype that holds them (uint8, int16, int32)."""
    top = int(values.max()) if values.size else 0
    if top < 1 << 8:
        return values.astype(np.uint8)
    return values.astype(np.int16 if top < 1 << 15 else np.int32)


def check_split(split: str, index: int, batch_size: int) -> None:
    if split not in SPLITS:
        raise InputError(f"split: invalid value {split!r}; allowed: {', '.join(SPLITS)}")
    for name, value, low in (("index", index, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
            raise InputError(f"{name}: invalid value {value!r}; allowed: an int >= {low}")


class ClassificationTask(Task):
    """Sequence classification over a generated, cached pool of examples (module docstring)."""

    config: ClassificationTaskConfig
    model_kinds: ClassVar[tuple[str, ...]] = ("encoder",)
    #: bump when the generator's output for a given config changes (invalidates old caches)
    data_version: ClassVar[int] = 1
    num_classes: int
    num_symbols: int

    def __init__(
        self, cfg: ClassificationTaskConfig, *, seed: int = 0, workdir: str | Path | None = None
    ) -> None:
        super().__init__(cfg, seed=seed, workdir=workdir)
        self.vocab_size = FIRST_SYMBOL_ID + self.num_symbols
        self.cache_hit = False
        self.pool = self._load_or_generate()
        self.splits = self._split(self.pool)
        self._check_lengths()
        counts = np.bincount(self.splits["train"].labels, minlength=self.num_classes)
        self.majority_class = int(np.argmax(counts))
        self._perms: dict[int, np.ndarray] = {}

    # -- what a subclass provides ---------------------------------------------------------------
    def generate(self, total: int, rng: np.random.Generator) -> Examples:
        """``total`` distinct examples, in a fixed order, from ``rng`` alone."""
        raise NotImplementedError

    def generation_key(self) -> dict[str, Any]:
        """Everything the generated pool depends on (hashed into the cache file name)."""
        fields = self.config.to_dict()
        for name in ("seq_len", "eval_batches", "cache"):
            fields.pop(name, None)
        return {"task": self.config.kind, "version": self.data_version, "config": fields}

    def extra_info(self) -> dict[str, Any]:
        """Task-specific facts added to :meth:`data_info`."""
        return {}

    # -- generation and cache ---------------------------------------------------------------------
    def total_size(self) -> int:
        cfg = self.config
        return cfg.train_size + cfg.val_size + cfg.test_size

    def cache_path(self) -> Path:
        key = json.dumps(self.generation_key(), sort_keys=True)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return cache_root() / self.config.kind / f"{digest}.pt"

    def _generate(self) -> Examples:
        rng = np.random.default_rng([self.config.data_seed, self.data_version])
        pool = self.generate(self.total_size(), rng)
        self._check_pool(pool, "generated")
        return pool

    def _load_or_generate(self) -> Examples:
        if not self.config.cache:
            return self._generate()
        path = self.cache_path()
        if path.is_file():
            pool = self._read_cache(path)
            if pool is not None:
                self.cache_hit = True
                return pool
        pool = self._generate()
        self._write_cache(path, pool)
        return pool

    def _read_cache(self, path: Path) -> Examples | None:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data["key"] != json.dumps(self.generation_key(), sort_keys=True):
                raise DataError("the stored generation key differs")
            pool = Examples(*(data[k].numpy() for k in ("symbols", "offsets", "labels")))
            self._check_pool(pool, "cached")
        except Exception as exc:  # any unreadable or inconsistent file: generate it again
            warnings.warn(f"ignoring dataset cache {path} ({exc}); generating again", stacklevel=3)
            return None
        return pool

    def _write_cache(self, path: Path, pool: Examples) -> None:
        data = {
            "key": json.dumps(self.generation_key(), sort_keys=True),
            "symbols": torch.from_numpy(np.ascontiguousarray(pool.symbols)),
            "offsets": torch.from_numpy(pool.offsets),
            "labels": torch.from_numpy(pool.labels),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: torch.save(data, tmp))
        except OSError as exc:
            warnings.warn(f"cannot cache the dataset at {path} ({exc})", stacklevel=3)

    def _check_pool(self, pool: Examples, what: str) -> None:
        total, offsets = self.total_size(), pool.offsets
        ok = (
            len(pool) == total
            and offsets.shape == (total + 1,)
            and offsets[0] == 0
            and offsets[-1] == len(pool.symbols)
            and bool(np.all(np.diff(offsets) >= 0))
            and (
                pool.labels.size == 0
                or 0 <= pool.labels.min() <= pool.labels.max() < self.num_classes
            )
            and (pool.symbols.size == 0 or 0 <= pool.symbols.min() <= pool.symbols.max())
            and (pool.symbols.size == 0 or int(pool.symbols.max()) < self.num_symbols)
        )
        if not ok:
            raise DataError(
                f"task {self.config.kind!r}: the {what} dataset is inconsistent (expected {total} "
                f"examples, symbols < {self.num_symbols}, labels < {self.num_classes})"
            )

    def _split(self, pool: Examples) -> dict[str, Examples]:
        cfg = self.config
        cuts = np.cumsum([0, cfg.train_size, cfg.val_size, cfg.test_size])
        return {s: pool.take(int(cuts[i]), int(cuts[i + 1])) for i, s in enumerate(SPLITS)}

    def _check_lengths(self) -> None:
        longest = int(self.pool.lengths.max())
        if longest + 1 > self.config.seq_len:
            raise DataError(
                f"task.seq_len: {self.config.seq_len} is shorter than the longest example "
                f"({longest} tokens + CLS); allowed: >= {longest + 1}"
            )

    # -- batches ----------------------------------------------------------------------------------
    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        check_split(split, index, batch_size)
        positions = np.arange(index * batch_size, (index + 1) * batch_size, dtype=np.int64)
        if split == "train":
            return self.collate(split, self._train_rows(positions))
        return self.collate(split, positions % len(self.splits[split]))

    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            g = batch_generator(self.seed, "train", epoch)
            self._perms[epoch] = torch.randperm(len(self.splits["train"]), generator=g).numpy()
        return self._perms[epoch]

    def _train_rows(self, positions: np.ndarray) -> np.ndarray:
        n = len(self.splits["train"])
        epochs, within = np.divmod(positions, n)
        rows = np.empty_like(positions)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            rows[sel] = self._epoch_permutation(int(epoch))[within[sel]]
        return rows

    def collate(self, split: str, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Examples ``rows`` of ``split`` as a padded batch (CLS first, PAD after the end)."""
        ex, width = self.splits[split], self.config.seq_len - 1
        lengths = ex.lengths[rows]
        real = np.arange(width)[None, :] < lengths[:, None]  # (B, T-1)
        source = ex.offsets[rows][:, None] + np.arange(width)[None, :]
        ids = np.full((len(rows), width + 1), PAD_ID, dtype=np.int64)
        ids[:, 0] = CLS_ID
        ids[:, 1:][real] = ex.symbols[source[real]].astype(np.int64) + FIRST_SYMBOL_ID
        mask = np.concatenate([np.ones((len(rows), 1), bool), real], axis=1)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(ex.labels[rows].astype(np.int64)),
        }

    # -- model, loss, metrics ---------------------------------------------------------------------
    def check_model(self, model_cfg: Any, path: str = "model") -> None:
        """The base checks, and a ``classifier`` head with ``num_classes`` = the task's classes."""
        super().check_model(model_cfg, path)
        head = getattr(model_cfg, "head", None)
        kind = getattr(head, "kind", None)
        if kind != "classifier":
            raise ConfigError(
                f"{path}.head.kind: {kind!r} cannot train task {self.config.kind!r}; "
                "allowed: classifier"
            )
        if head.num_classes != self.num_classes:
            raise ConfigError(
                f"{path}.head.num_classes: invalid value {head.num_classes!r}; task "
                f"{self.config.kind!r} has {self.num_classes} classes; allowed: {self.num_classes}"
            )

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, num_classes) scores; an all-True mask is passed as None (same result, any kind)."""
        mask = batch["attention_mask"]
        out = model(batch["input_ids"], attention_mask=None if bool(mask.all()) else mask)
        expected = (len(batch["labels"]), self.num_classes)
        if tuple(out.shape) != expected:
            raise InputError(
                f"model output: shape {tuple(out.shape)}; task {self.config.kind!r} needs "
                f"(batch, num_classes) = {expected} (an encoder with a classifier head)"
            )
        return out

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = self.logits(model, batch)
        labels = batch["labels"]
        return nn.functional.cross_entropy(logits.float(), labels), len(labels)

    def _score(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Sums over the batch: loss, correct answers, correct majority-class answers, count."""
        logits = self.logits(model, batch).float()
        labels = batch["labels"]
        return {
            "loss": float(nn.functional.cross_entropy(logits, labels, reduction="sum")),
            "correct": float((logits.argmax(-1) == labels).sum()),
            "majority": float((labels == self.majority_class).sum()),
            "count": float(len(labels)),
        }

    @torch.no_grad()
    def metrics(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        s = self._score(model, batch)
        return {
            "accuracy": s["correct"] / s["count"],
            "majority_baseline": s["majority"] / s["count"],
        }

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int, split: str = "val") -> dict[str, float]:
        """Loss (``val_loss`` or ``test_loss``), ``accuracy`` and ``majority_baseline`` over the
        first ``min(eval_batches * batch_size, size)`` examples of ``split``, each counted once."""
        check_split(split, 0, batch_size)
        n = min(self.config.eval_batches * batch_size, len(self.splits[split]))
        was_training = model.training
        model.eval()
        totals = dict.fromkeys(("loss", "correct", "majority", "count"), 0.0)
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(start + batch_size, n))
            for k, v in self._score(model, self.collate(split, rows)).items():
                totals[k] += v
        model.train(was_training)
        count = totals["count"]
        return {
            f"{'test' if split == 'test' else 'val'}_loss": totals["loss"] / count,
            "accuracy": totals["correct"] / count,
            "majority_baseline": totals["majority"] / count,
        }

    # -- facts ------------------------------------------------------------------------------------
    def majority_baseline(self, split: str) -> float:
        """Accuracy of always answering the most frequent training class on all of ``split``."""
        return float(np.mean(self.splits[split].labels == self.majority_class))

    def _split_info(self, split: str) -> dict[str, Any]:
        ex = self.splits[split]
        lengths = ex.lengths
        return {
            "examples": len(ex),
            "class_counts": np.bincount(ex.labels, minlength=self.num_classes).tolist(),
            "mean_length": float(lengths.mean()),
            "max_length": int(lengths.max()),
            "majority_baseline": self.majority_baseline(split),
        }

    def data_info(self) -> dict[str, Any]:
        return {
            "task": self.config.kind,
            "num_classes": self.num_classes,
            "vocab_size": self.vocab_size,
            "pad_id": PAD_ID,
            "cls_id": CLS_ID,
            "data_seed": self.config.data_seed,
            "majority_class": self.majority_class,
            "splits": {s: self._split_info(s) for s in SPLITS},
            "sha256": self.pool.sha256(),
            "cache": {
                "path": str(self.cache_path()) if self.config.cache else None,
                "hit": self.cache_hit,
            },
            **self.extra_info(),
        }
