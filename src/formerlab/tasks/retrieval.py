"""``retrieval``: do two documents come from the same package? LRA Retrieval on Python sources.

Paper: Tay, Dehghani, Abnar, Shen, Bahri, Pham, Rao, Yang, Ruder, Metzler, "Long Range Arena: A
Benchmark for Efficient Transformers", ICLR 2021, arXiv:2011.04006 (Retrieval: byte-level document
matching on the ACL Anthology Network, two towers with shared weights).

Corpus: the Python standard library's sources (``code_lm``'s file list, :func:`stdlib_files`), or
the ``.py`` files under ``root`` (same listing rule). A file's *package* is the first folder of its
path under the root; files directly under the root (top-level modules) and files shorter than
``min_file_bytes`` are left out. A *document* is ``doc_len`` bytes of one file: its first bytes
(``window: first``) or a window at a random offset (``window: random``); a shorter file is a shorter
document (padded in the batch).

Split by file, stratified by package: each package's files are shuffled (``data_seed``) and
``round(n * val_file_fraction)`` of them go to val, ``round(n * test_file_fraction)`` to test, the
rest to train, so no file (hence no document) is in two splits and every split sees the same
packages. A split's pairs use only its own files. Pair ``i`` has label 1 (same package) for even
``i`` and 0 for odd ``i`` (balanced); its first file is uniform over the split's files whose
package has another file in the split; the second is another file of that package (label 1) or a
file of another package (label 0), uniform. The two files always differ. Pairs may repeat.

Storage (the :mod:`~formerlab.tasks.classification` pool, generated once and cached; the cache key
holds the corpus fingerprint, a sha256 over every used file's path and sha256): a pair is stored as
``bytes_a, SEP, bytes_b`` with symbol ``SEP = 256``, which never reaches the model. A batch holds
``input_ids`` (B, 2, seq_len) long (row ``[:, k]`` = ``CLS, byte+2, .., PAD ..`` of document k),
``attention_mask`` (B, 2, seq_len) bool and ``labels`` (B,); vocab_size 258 (PAD 0, CLS 1, bytes).
The model is an encoder with a ``pair_classifier`` head (two towers, shared weights).

Differences from the paper: Python standard library files and package membership instead of AAN
papers and citation links; 256-byte documents by default (LRA: 4,000 bytes each); pairs are sampled
here, not given; a CLS token starts each document.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from ..config import join, param
from ..errors import ConfigError, DataError
from ..registry import TASK
from .base import Task
from .classification import (
    CLS_ID,
    FIRST_SYMBOL_ID,
    PAD_ID,
    SPLITS,
    ClassificationTask,
    ClassificationTaskConfig,
    Examples,
    check_min,
)
from .code_lm import stdlib_files, stdlib_root
from .lm import Document, manifest

#: stored between the two documents of a pair; never a token
SEP = 256
BYTE_SYMBOLS = 256


@dataclass(kw_only=True)
class RetrievalConfig(ClassificationTaskConfig):
    """Same package or not? Pairs of byte documents from Python source files (2 classes)."""

    kind: ClassVar[str] = "retrieval"
    #: batches hold document pairs: input_ids (B, 2, seq_len); the model needs a pair head
    pair_input: ClassVar[bool] = True
    seq_len: int = param(257, doc="tokens per document: doc_len bytes + CLS")
    doc_len: int = param(256, doc="bytes per document (a shorter file gives a shorter one)")
    window: Literal["first", "random"] = param(
        "first", doc="a document is a file's first bytes, or a window at a random offset"
    )
    root: str | None = param(
        None, doc="folder of .py files (package = first folder); null: the Python standard library"
    )
    include_tests: bool = param(False, doc="also use files under test/ and tests/ folders")
    min_file_bytes: int = param(64, doc="leave out files shorter than this")
    val_file_fraction: float = param(0.1, doc="share of each package's files held out for val")
    test_file_fraction: float = param(0.1, doc="share of each package's files held out for test")

    def validate(self, path: str = "") -> None:
        super().validate(path)
        check_min(path, "doc_len", self.doc_len, 1)
        check_min(path, "min_file_bytes", self.min_file_bytes, 1)
        if self.seq_len < self.doc_len + 1:
            raise ConfigError(
                f"{join(path, 'seq_len')}: invalid value {self.seq_len!r}; a document is "
                f"doc_len={self.doc_len} bytes + CLS; allowed: >= {self.doc_len + 1}"
            )
        for name in ("val_file_fraction", "test_file_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(
                    f"{join(path, name)}: invalid value {value!r}; allowed: 0 < value < 1"
                )
        if self.val_file_fraction + self.test_file_fraction >= 1.0:
            raise ConfigError(
                f"{join(path, 'test_file_fraction')}: invalid value {self.test_file_fraction!r}; "
                f"with val_file_fraction={self.val_file_fraction} nothing is left to train; "
                f"allowed: < {1.0 - self.val_file_fraction:g}"
            )
        if self.root is not None and not self.root.strip():
            raise ConfigError(
                f"{join(path, 'root')}: invalid value {self.root!r}; allowed: null or a folder"
            )


def read_file(root: Path, name: str) -> Document:
    try:
        return Document(name, (root / name).read_bytes())
    except OSError as exc:
        raise DataError(f"retrieval: cannot read {str(root / name)!r} ({exc.strerror})") from None


def package_of(path: str) -> str | None:
    """The first folder of a relative posix path; None for a file directly under the root."""
    head, sep, _ = path.partition("/")
    return head if sep else None


def split_files(
    packages: dict[str, list[int]], val: float, test: float, rng: np.random.Generator
) -> dict[str, dict[str, list[int]]]:
    """Each package's files (ids) shuffled and cut into val / test / train by share, rounded."""
    out: dict[str, dict[str, list[int]]] = {s: {} for s in SPLITS}
    for name in sorted(packages):
        files = [packages[name][i] for i in rng.permutation(len(packages[name]))]
        n = len(files)
        n_val = int(np.floor(n * val + 0.5))
        n_test = min(int(np.floor(n * test + 0.5)), n - n_val)
        cuts = {"val": files[:n_val], "test": files[n_val : n_val + n_test]}
        cuts["train"] = files[n_val + n_test :]
        for split, chosen in cuts.items():
            if chosen:
                out[split][name] = sorted(chosen)
    return out


def sample_pairs(
    packages: dict[str, list[int]], count: int, rng: np.random.Generator, split: str
) -> list[tuple[int, int, int]]:
    """``count`` (file_a, file_b, label) triples, labels 1, 0, 1, ... (rules: module docstring)."""
    usable = [p for p in sorted(packages) if len(packages[p]) >= 2]
    if not usable or len(packages) < 2:
        raise DataError(
            f"retrieval: the {split} split needs a package with two files and two packages "
            f"(has {len(packages)} packages, {len(usable)} with two files or more); use more files "
            "or larger file fractions"
        )
    firsts = [(p, f) for p in usable for f in packages[p]]
    elsewhere = {p: sorted(f for q in packages if q != p for f in packages[q]) for p in usable}
    pairs = []
    for i in range(count):
        package, a = firsts[int(rng.integers(len(firsts)))]
        if i % 2 == 0:
            others = [f for f in packages[package] if f != a]
        else:
            others = elsewhere[package]
        pairs.append((a, others[int(rng.integers(len(others)))], int(i % 2 == 0)))
    return pairs


@TASK.register(RetrievalConfig)
class RetrievalTask(ClassificationTask):
    """LRA Retrieval-style matching: are two source documents from the same package?"""

    paper = (
        "Tay et al., 2021, Long Range Arena: A Benchmark for Efficient Transformers, "
        "arXiv:2011.04006"
    )
    config: RetrievalConfig
    num_classes = 2
    num_symbols = BYTE_SYMBOLS + 1  # the stored pool also holds SEP

    def __init__(self, cfg: RetrievalConfig, **kwargs: Any) -> None:
        self._load_corpus(cfg)
        super().__init__(cfg, **kwargs)
        self.vocab_size = FIRST_SYMBOL_ID + BYTE_SYMBOLS  # SEP is never a token
        self._contents: list[bytes] | None = None  # only needed to generate

    # -- corpus -----------------------------------------------------------------------------------
    def _load_corpus(self, cfg: RetrievalConfig) -> None:
        self.root = Path(cfg.root) if cfg.root is not None else stdlib_root()
        if not self.root.is_dir():
            raise DataError(f"task.root: {str(self.root)!r} is not a folder")
        self.available = stdlib_files(cfg.include_tests, self.root)
        docs = [read_file(self.root, p) for p in self.available if package_of(p)]
        kept = [d for d in docs if len(d.data) >= cfg.min_file_bytes]
        self.skipped = {"top_level_modules": len(self.available) - len(docs)}
        self.skipped["shorter_than_min_file_bytes"] = len(docs) - len(kept)
        self.files = [d.name for d in kept]
        self._contents = [d.data for d in kept]
        self.manifest = manifest(kept)
        packages: dict[str, list[int]] = {}
        for i, name in enumerate(self.files):
            packages.setdefault(package_of(name) or "", []).append(i)
        rng = np.random.default_rng([cfg.data_seed, self.data_version, 1])
        self.split_packages = split_files(
            packages, cfg.val_file_fraction, cfg.test_file_fraction, rng
        )

    def split_file_names(self, split: str) -> list[str]:
        """The files whose documents make up ``split`` (sorted)."""
        ids = [f for files in self.split_packages[split].values() for f in files]
        return sorted(self.files[f] for f in ids)

    def generation_key(self) -> dict[str, Any]:
        return {**super().generation_key(), "corpus_sha256": self.manifest["sha256"]}

    # -- generation -------------------------------------------------------------------------------
    def document(self, file: int, rng: np.random.Generator) -> np.ndarray:
        """``doc_len`` bytes of file ``file`` (first bytes or a random window) as symbols."""
        data, n = self._contents[file], self.config.doc_len
        start = 0
        if self.config.window == "random" and len(data) > n:
            start = int(rng.integers(len(data) - n + 1))
        return np.frombuffer(data[start : start + n], dtype=np.uint8)

    def generate(self, total: int, rng: np.random.Generator) -> Examples:
        cfg, sep = self.config, np.array([SEP], dtype=np.int64)
        sequences, labels = [], []
        for split, count in zip(SPLITS, (cfg.train_size, cfg.val_size, cfg.test_size), strict=True):
            for a, b, label in sample_pairs(self.split_packages[split], count, rng, split):
                sequences.append(
                    np.concatenate([self.document(a, rng), sep, self.document(b, rng)])
                )
                labels.append(label)
        return Examples.from_sequences(sequences, labels)

    # -- pool layout: two documents per example ---------------------------------------------------
    def _check_pool(self, pool: Examples, what: str) -> None:
        super()._check_pool(pool, what)
        seps = np.flatnonzero(pool.symbols == SEP)
        if len(seps) != len(pool) or not np.all(
            (pool.offsets[:-1] <= seps) & (seps < pool.offsets[1:])
        ):
            raise DataError(
                f"task 'retrieval': the {what} dataset does not hold one pair per example"
            )

    def _split(self, pool: Examples) -> dict[str, Examples]:
        splits = super()._split(pool)
        self._seps = {s: np.flatnonzero(ex.symbols == SEP) for s, ex in splits.items()}
        return splits

    def document_lengths(self, split: str) -> np.ndarray:
        """(N, 2) byte lengths of the two documents of every pair of ``split``."""
        ex, seps = self.splits[split], self._seps[split]
        return np.stack([seps - ex.offsets[:-1], ex.offsets[1:] - seps - 1], axis=1)

    def _check_lengths(self) -> None:
        longest = max(int(self.document_lengths(s).max(initial=0)) for s in SPLITS)
        if longest + 1 > self.config.seq_len:
            raise DataError(
                f"task.seq_len: {self.config.seq_len} is shorter than the longest document "
                f"({longest} bytes + CLS); allowed: >= {longest + 1}"
            )

    def _tokens(self, symbols: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple:
        """Documents ``symbols[starts:ends]`` as (B, seq_len) ids (CLS, byte+2, PAD) and mask."""
        width = self.config.seq_len - 1
        real = np.arange(width)[None, :] < (ends - starts)[:, None]  # (B, T-1)
        source = starts[:, None] + np.arange(width)[None, :]
        ids = np.full((len(starts), width + 1), PAD_ID, dtype=np.int64)
        ids[:, 0] = CLS_ID
        ids[:, 1:][real] = symbols[source[real]].astype(np.int64) + FIRST_SYMBOL_ID
        mask = np.concatenate([np.ones((len(starts), 1), bool), real], axis=1)
        return ids, mask

    def collate(self, split: str, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Pairs ``rows`` of ``split``: input_ids / attention_mask (B, 2, seq_len), labels (B,)."""
        ex, seps = self.splits[split], self._seps[split][rows]
        ids_a, mask_a = self._tokens(ex.symbols, ex.offsets[rows], seps)
        ids_b, mask_b = self._tokens(ex.symbols, seps + 1, ex.offsets[rows + 1])
        return {
            "input_ids": torch.from_numpy(np.stack([ids_a, ids_b], axis=1)),
            "attention_mask": torch.from_numpy(np.stack([mask_a, mask_b], axis=1)),
            "labels": torch.from_numpy(ex.labels[rows].astype(np.int64)),
        }

    # -- model and facts --------------------------------------------------------------------------
    def check_model(self, model_cfg: Any, path: str = "model") -> None:
        """Kind, vocabulary and length (:class:`Task`), and a pair head (``pair_classifier``) with
        2 classes, instead of the single-sequence ``classifier`` of the other classification tasks."""
        Task.check_model(self, model_cfg, path)
        head = model_cfg.head
        if not getattr(head, "pair_input", False):
            raise ConfigError(
                f"{path}.head.kind: {head.kind!r} cannot train task 'retrieval' (two documents "
                "per example); allowed: pair_classifier"
            )
        if getattr(head, "num_classes", None) != self.num_classes:
            raise ConfigError(
                f"{path}.head.num_classes: invalid value {head.num_classes!r}; task 'retrieval' "
                f"has {self.num_classes} classes; allowed: {self.num_classes}"
            )

    def _split_info(self, split: str) -> dict[str, Any]:
        info = super()._split_info(split)
        lengths = self.document_lengths(split)
        info.update(
            mean_length=float(lengths.mean()),
            max_length=int(lengths.max()),
            files=len(self.split_file_names(split)),
            packages=len(self.split_packages[split]),
        )
        return info

    def extra_info(self) -> dict[str, Any]:
        counts = {
            p: [len(self.split_packages[s].get(p, [])) for s in SPLITS]
            for p in sorted({p for s in SPLITS for p in self.split_packages[s]})
        }
        return {
            "root": str(self.root),
            "python": platform.python_version(),
            "split_rule": "by file, stratified by package",
            "files_available": len(self.available),
            "files_used": len(self.files),
            "files_skipped": self.skipped,
            "package_files_train_val_test": counts,
            "corpus_sha256": self.manifest["sha256"],
            "manifest": self.manifest,
        }
