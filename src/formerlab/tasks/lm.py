"""Language modelling on a byte corpus: the one implementation behind ``code_lm`` and ``text_lm``.

A source (:meth:`LMTask.load_documents`) yields named byte documents in a fixed order. They are split
into train/val (:func:`split_documents`), the tokenizer is trained on the train split, and each split
is tokenized once into a numpy stream (documents joined in order). A batch is ``batch_size`` random
windows of ``seq_len + 1`` tokens from the split's stream, drawn with
``batch_generator(seed, split, index)``: ``input_ids`` is a window without its last token and
``labels`` the same window without its first (``labels[t]`` is the target at position ``t``).

Split rule: with two or more documents, by file — a document goes to val when the first 8 bytes of
``sha256(name)``, read as a fraction of 2**64, are below ``val_fraction``. If that puts no document in
val, the non-empty one with the smallest fraction goes there; if it puts every document in val, the
non-empty one with the largest fraction stays in train. With one document, the last ``val_fraction`` of
its bytes is val (the cut moves forward past UTF-8 continuation bytes, never splitting a character).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..config import join, param
from ..errors import ConfigError, DataError, InputError
from ..tokenizers import (
    ByteTokenizerConfig,
    Tokenizer,
    TokenizerConfig,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    write_text_atomic,
)
from .base import Task, TaskConfig, batch_generator

SPLITS = ("train", "val")
MANIFEST_FILE = "data_manifest.json"


def check_split(split: str, batch_size: int) -> None:
    """InputError unless ``split`` is a known split and ``batch_size`` >= 1."""
    if split not in SPLITS:
        raise InputError(f"split: invalid value {split!r}; allowed: {', '.join(SPLITS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise InputError(f"batch_size: invalid value {batch_size!r}; allowed: an int >= 1")


def check_positive(cfg: TaskConfig, path: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 1:
            raise ConfigError(f"{join(path, name)}: invalid value {value!r}; allowed: >= 1")


@dataclass(kw_only=True)
class LMTaskConfig(TaskConfig):
    """Fields shared by the byte-corpus language-modelling tasks."""

    val_fraction: float = param(0.05, doc="share of files (or bytes, for one file) held out")
    tokenizer: TokenizerConfig = param(
        factory=ByteTokenizerConfig,
        doc="how bytes become tokens; bpe is trained on the train split",
    )

    def validate(self, path: str = "") -> None:
        check_positive(self, path, ("seq_len", "eval_batches"))
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"{join(path, 'val_fraction')}: invalid value {self.val_fraction!r}; "
                "allowed: 0 < val_fraction < 1"
            )


# -- documents, splits, manifest ---------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One named piece of the corpus (``name`` is its manifest key, e.g. a relative path)."""

    name: str
    data: bytes


def name_fraction(name: str) -> float:
    """Where ``name`` falls in [0, 1): the first 8 bytes of sha256(name) over 2**64."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(docs: list[Document], choose: Any) -> Document:
    pool = [d for d in docs if d.data] or docs
    return choose(pool, key=lambda d: name_fraction(d.name))


def split_by_file(docs: list[Document], val_fraction: float) -> dict[str, list[Document]]:
    """The by-file split (module docstring); both splits non-empty for two or more documents."""
    val = {d.name for d in docs if name_fraction(d.name) < val_fraction}
    if not val:
        val = {_pick(docs, min).name}
    if len(val) == len(docs):
        val.discard(_pick(docs, max).name)
    return {
        "train": [d for d in docs if d.name not in val],
        "val": [d for d in docs if d.name in val],
    }


def split_by_bytes(doc: Document, val_fraction: float) -> dict[str, list[Document]]:
    """One document: the last ``val_fraction`` of its bytes is val."""
    data = doc.data
    cut = len(data) - math.ceil(len(data) * val_fraction)
    for _ in range(3):  # a UTF-8 character has at most 3 continuation bytes
        if 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:
            cut += 1
    return {
        "train": [Document(f"{doc.name}[:{cut}]", data[:cut])],
        "val": [Document(f"{doc.name}[{cut}:]", data[cut:])],
    }


def split_documents(docs: list[Document], val_fraction: float) -> dict[str, list[Document]]:
    if len(docs) >= 2:
        return split_by_file(docs, val_fraction)
    return split_by_bytes(docs[0], val_fraction)


def manifest(docs: list[Document]) -> dict[str, Any]:
    """Each document's name, size and sha256, and one sha256 over ``sha256  name`` lines."""
    files = [
        {"path": d.name, "bytes": len(d.data), "sha256": hashlib.sha256(d.data).hexdigest()}
        for d in docs
    ]
    lines = "".join(f"{f['sha256']}  {f['path']}\n" for f in files)
    return {"files": files, "sha256": hashlib.sha256(lines.encode("utf-8")).hexdigest()}


def unigram_entropy_bits(docs: list[Document]) -> float:
    """Entropy of the byte unigram distribution of ``docs``, in bits per byte."""
    counts = np.zeros(256, dtype=np.int64)
    for d in docs:
        counts += np.bincount(np.frombuffer(d.data, dtype=np.uint8), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def stream_dtype(vocab_size: int) -> type:
    if vocab_size <= 1 << 8:
        return np.uint8
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def encode_stream(tok: Tokenizer, docs: list[Document]) -> np.ndarray:
    """All ``docs`` tokenized and concatenated in order, in the smallest integer dtype."""
    texts = [d.data for d in docs]
    if hasattr(tok, "encode_many"):
        ids = tok.encode_many(texts)
    else:
        ids = np.fromiter(itertools.chain.from_iterable(map(tok.encode, texts)), dtype=np.int64)
    return ids.astype(stream_dtype(tok.vocab_size), copy=False)


# -- the task ------------------------------------------------------------------------------------


class LMTask(Task):
    """Next-token prediction over a corpus of byte documents (subclasses provide the documents)."""

    config: LMTaskConfig
    #: short description of where the documents come from (recorded in data_info)
    source: ClassVar[str] = ""

    def __init__(
        self, cfg: LMTaskConfig, *, seed: int = 0, workdir: str | Path | None = None
    ) -> None:
        super().__init__(cfg, seed=seed, workdir=workdir)
        docs = self.load_documents()
        self.manifest = manifest(docs)
        self.splits = split_documents(docs, cfg.val_fraction)
        self.tokenizer = self._tokenizer()
        self.vocab_size = self.tokenizer.vocab_size
        self.streams = {s: encode_stream(self.tokenizer, self.splits[s]) for s in SPLITS}
        self._check_lengths()
        self.info = self._info(docs)
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            save_tokenizer(self.tokenizer, self.workdir)
            write_text_atomic(self.workdir / MANIFEST_FILE, json.dumps(self.info, indent=1))

    def load_documents(self) -> list[Document]:
        """The corpus, in its fixed order (at least one document)."""
        raise NotImplementedError

    def extra_info(self) -> dict[str, Any]:
        """Source-specific facts added to :meth:`data_info`."""
        return {}

    # -- set-up ------------------------------------------------------------------------------
    def _tokenizer(self) -> Tokenizer:
        """The saved tokenizer of this run (same config, same training split), else a new one."""
        saved = self._saved_tokenizer()
        if saved is not None:
            return saved
        tok = build_tokenizer(self.config.tokenizer)
        tok.train([d.data for d in self.splits["train"]])
        return tok

    def _saved_tokenizer(self) -> Tokenizer | None:
        if self.workdir is None:
            return None
        try:
            saved = json.loads((self.workdir / MANIFEST_FILE).read_text(encoding="utf-8"))
            if saved["splits"]["train"]["sha256"] != self._train_sha():
                return None
            tok = load_tokenizer(self.workdir)
        except (OSError, ValueError, LookupError, TypeError, DataError):
            return None  # nothing usable saved: train again (training is deterministic)
        return tok if tok is not None and tok.config == self.config.tokenizer else None

    def _train_sha(self) -> str:
        return manifest(self.splits["train"])["sha256"]

    def _check_lengths(self) -> None:
        need = self.config.seq_len + 1
        for split in SPLITS:
            have = len(self.streams[split])
            if have < need:
                names = ", ".join(d.name for d in self.splits[split][:5])
                raise DataError(
                    f"task {self.config.kind!r}: the {split} split has {have} tokens ({names}); "
                    f"task.seq_len={self.config.seq_len} needs at least {need}: use more data "
                    "or a shorter seq_len"
                )

    # -- facts ---------------------------------------------------------------------------------
    def split_bytes(self, split: str) -> int:
        return sum(len(d.data) for d in self.splits[split])

    def tokens_per_byte(self, split: str) -> float:
        return len(self.streams[split]) / self.split_bytes(split)

    def _split_info(self, split: str) -> dict[str, Any]:
        docs = self.splits[split]
        return {
            "files": len(docs),
            "bytes": self.split_bytes(split),
            "tokens": len(self.streams[split]),
            "tokens_per_byte": self.tokens_per_byte(split),
            "sha256": manifest(docs)["sha256"],
        }

    def _info(self, docs: list[Document]) -> dict[str, Any]:
        return {
            "task": self.config.kind,
            "source": self.source,
            "split_rule": "by file (sha256 of name)" if len(docs) >= 2 else "by bytes (last part)",
            "val_fraction": self.config.val_fraction,
            "tokenizer": self.tokenizer.config.to_dict(),
            "vocab_size": self.vocab_size,
            "splits": {s: self._split_info(s) for s in SPLITS},
            "val_files": [d.name for d in self.splits["val"]],
            "unigram_entropy_bits": unigram_entropy_bits(self.splits["train"]),
            **self.extra_info(),
            "manifest": self.manifest,
        }

    def data_info(self) -> dict[str, Any]:
        return self.info

    # -- data and metrics ------------------------------------------------------------------------
    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        check_split(split, batch_size)
        stream, span = self.streams[split], self.config.seq_len + 1
        g = batch_generator(self.seed, split, index)
        starts = torch.randint(0, len(stream) - span + 1, (batch_size,), generator=g).numpy()
        windows = torch.from_numpy(stream[starts[:, None] + np.arange(span)].astype(np.int64))
        return {"input_ids": windows[:, :-1].contiguous(), "labels": windows[:, 1:].contiguous()}

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        """Validation loss (nats/token) and ``bits_per_byte`` = loss · tokens/byte of val / ln 2."""
        out = super().evaluate(model, batch_size)
        out["bits_per_byte"] = out["val_loss"] * self.tokens_per_byte("val") / math.log(2)
        return out
