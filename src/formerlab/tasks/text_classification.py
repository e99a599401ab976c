"""``text_classification``: byte-level classification of real texts, an LRA "Text" stand-in.

Paper: Tay, Dehghani, Abnar, Shen, Bahri, Pham, Rao, Yang, Ruder, Metzler, "Long Range Arena: A
Benchmark for Efficient Transformers", ICLR 2021, arXiv:2011.04006 (its Text task: IMDb reviews read
as bytes, binary sentiment; Maas et al., 2011).

The texts are the Debian fortune-cookie files, found with ``dpkg -L <package>`` (never by folder:
several packages share ``/usr/share/games/fortunes``): regular files there, not symlinks, not
``*.dat`` / ``*.u8``. ``root`` replaces the Debian packages with a folder holding one sub-folder per
package name (``root/fortunes-de/...``), read recursively — for tests and for your own corpus.

- ``dataset: language`` (default): the label is the package's language — en (``fortunes`` +
  ``fortunes-min``), de, es, it, ru, pl, cs, pt (``fortunes-br``), in that order.
- ``dataset: topic``: ``fortunes`` + ``fortunes-min`` only; the label is the file name (43 topics,
  people 1,251 texts .. pratchett 2). Topics with fewer than ``min_examples_per_class`` texts are
  dropped (24 topics remain at the default 200; ``data_info`` lists what was kept and dropped).

``classes`` names the labels explicitly (label ``i`` = ``classes[i]``); ``min_examples_per_class`` is
then not applied. A file is decoded as UTF-8, or as Latin-1 where that fails; a text is what lies
between lines holding only ``%`` (the ``"\\n%\\n"`` separator), stripped; empty texts are dropped. A
text is kept when ``min_bytes <= len(utf-8 bytes) <= max_bytes`` and then cut to its first
``seq_len - 1`` bytes (CLS takes one position; ``data_info`` counts the truncated texts). Texts whose
cut bytes are identical are kept once; one that occurs under two labels is dropped (both counted).

Symbols are the 256 byte values (vocab_size 258 with PAD and CLS). ``balance: true`` (default) caps
every class at the count of the smallest one, so the majority baseline is 1 / classes. The pool is
stratified and seeded by ``data_seed``: each class's texts are shuffled, then the classes are
interleaved in proportion to their counts (round robin when balanced), so the train / val / test
cuts (and any prefix of them) hold the classes in the pool's proportions. Asking for more than the
pool holds is a DataError that says how many there are. The cache key includes the sha256 of every
source file, so a changed corpus is read again.

Differences from the paper: fortunes (8 languages or up to 43 topics) instead of IMDb sentiment (the
IMDb download is not available offline); CPU-sized ``seq_len`` (256 by default; LRA used 4K bytes in
the paper, 1K in its released config); a CLS token in front; deduplication and balancing.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..config import join, param
from ..errors import ConfigError, DataError
from ..registry import TASK
from .classification import ClassificationTask, ClassificationTaskConfig, Examples, check_min

FORTUNE_DIR = "/usr/share/games/fortunes/"
#: language -> the Debian packages holding its fortunes (label order of ``dataset: language``)
LANGUAGE_PACKAGES: dict[str, tuple[str, ...]] = {
    "en": ("fortunes", "fortunes-min"),
    "de": ("fortunes-de",),
    "es": ("fortunes-es",),
    "it": ("fortunes-it",),
    "ru": ("fortunes-ru",),
    "pl": ("fortunes-pl",),
    "cs": ("fortunes-cs",),
    "pt": ("fortunes-br",),
}
TOPIC_PACKAGES = ("fortunes", "fortunes-min")
SKIP_SUFFIXES = (".dat", ".u8")
#: a line holding only "%" (trailing blanks allowed) ends a text
SEPARATOR = re.compile(r"^%[ \t]*$", re.MULTILINE)


@dataclass(kw_only=True)
class TextClassificationConfig(ClassificationTaskConfig):
    """Classify fortune-cookie texts, read as bytes, by language or by topic."""

    kind: ClassVar[str] = "text_classification"
    seq_len: int = param(256, doc="tokens per example: CLS + the text's first seq_len-1 bytes")
    dataset: Literal["language", "topic"] = param(
        "language", doc="language: 8 languages (by package); topic: file names of fortunes(-min)"
    )
    classes: list[str] | None = param(
        None, doc="the labels to keep, in label order; null: every class with enough texts"
    )
    min_examples_per_class: int = param(
        200, doc="drop classes with fewer texts (after deduplication); ignored with classes"
    )
    balance: bool = param(True, doc="cap every class at the smallest class's count")
    min_bytes: int = param(1, doc="drop texts shorter than this (UTF-8 bytes, before the cut)")
    max_bytes: int | None = param(None, doc="drop texts longer than this; null: no limit")
    root: str | None = param(
        None, doc="folder with one sub-folder per package name instead of dpkg; null: Debian"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        check_min(path, "seq_len", self.seq_len, 2)
        check_min(path, "min_examples_per_class", self.min_examples_per_class, 1)
        check_min(path, "min_bytes", self.min_bytes, 1)
        check_min(path, "max_bytes", self.max_bytes, self.min_bytes, nullable=True)
        if self.root is not None and not self.root.strip():
            raise ConfigError(
                f"{join(path, 'root')}: invalid value {self.root!r}; allowed: null or a folder"
            )
        if self.classes is not None:
            self._check_classes(path)

    def _check_classes(self, path: str) -> None:
        name, classes = join(path, "classes"), self.classes or []
        if len(classes) < 2 or len(set(classes)) != len(classes) or not all(classes):
            raise ConfigError(
                f"{name}: invalid value {classes!r}; allowed: null or 2 or more distinct names"
            )
        if self.dataset == "language":
            bad = [c for c in classes if c not in LANGUAGE_PACKAGES]
            if bad:
                raise ConfigError(
                    f"{name}: invalid value {bad[0]!r}; allowed: {', '.join(LANGUAGE_PACKAGES)}"
                )


# -- reading ---------------------------------------------------------------------------------------


def decode_text(data: bytes) -> str:
    """UTF-8, or Latin-1 where the bytes are not valid UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def split_fortunes(data: bytes) -> list[bytes]:
    """The texts of a fortune file as UTF-8 bytes: separated by lines holding only ``%``,
    stripped, empty ones dropped."""
    pieces = SEPARATOR.split(decode_text(data).replace("\r\n", "\n"))
    return [t.encode("utf-8") for t in map(str.strip, pieces) if t]


def _package_candidates(package: str, root: str | None) -> list[Path] | None:
    """Paths a package owns (None: not installed / no such folder)."""
    if root is not None:
        folder = Path(root) / package
        return sorted(folder.rglob("*")) if folder.is_dir() else None
    try:
        listing = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return None
    if listing.returncode != 0:
        return None
    return [Path(line) for line in listing.stdout.splitlines() if line.startswith(FORTUNE_DIR)]


def package_files(packages: Sequence[str], root: str | None) -> dict[str, list[Path]]:
    """Each package's fortune files (sorted); DataError naming every missing package."""
    found, missing = {}, []
    for package in packages:
        paths = _package_candidates(package, root)
        keep = [
            p
            for p in paths or []
            if p.is_file() and not p.is_symlink() and not p.name.endswith(SKIP_SUFFIXES)
        ]
        if not keep:
            missing.append(package)
        found[package] = sorted(keep)
    if missing:
        names = " ".join(missing)
        if root is not None:
            raise DataError(
                f"task.root: {root!r} has no fortune files for {', '.join(missing)}; expected "
                f"files under {', '.join(str(Path(root) / m) for m in missing)}"
            )
        raise DataError(
            f"task 'text_classification' needs the Debian packages {', '.join(missing)} "
            f"(not installed, or no fortune files); install them with: "
            f"apt-get install -y {names}  (or set task.root to a folder of your own files)"
        )
    return found


@dataclass
class Corpus:
    """Texts by label after filtering, cutting and deduplication, and what was dropped."""

    texts: dict[str, list[bytes]]
    files: int
    fingerprint: str
    stats: dict[str, int] = field(default_factory=dict)


def read_corpus(cfg: TextClassificationConfig) -> Corpus:
    """Every label's texts in file order (the label of each file by ``cfg.dataset``)."""
    if cfg.dataset == "language":
        wanted = cfg.classes or list(LANGUAGE_PACKAGES)
        owners = {p: lang for lang in wanted for p in LANGUAGE_PACKAGES[lang]}
    else:
        owners = dict.fromkeys(TOPIC_PACKAGES, "")
    files = package_files(list(owners), cfg.root)
    digest = hashlib.sha256()
    labelled: list[tuple[str, bytes]] = []
    stats = dict.fromkeys(("texts", "filtered", "truncated", "duplicates", "conflicts"), 0)
    width = cfg.seq_len - 1
    for package, paths in files.items():
        for path in paths:
            data = path.read_bytes()
            digest.update(f"{package}/{path}:{hashlib.sha256(data).hexdigest()}\n".encode())
            label = owners[package] or path.name
            for text in split_fortunes(data):
                stats["texts"] += 1
                too_long = cfg.max_bytes is not None and len(text) > cfg.max_bytes
                if len(text) < cfg.min_bytes or too_long:
                    stats["filtered"] += 1
                    continue
                stats["truncated"] += len(text) > width
                labelled.append((label, text[:width]))
    texts = _deduplicate(labelled, stats)
    return Corpus(texts, sum(map(len, files.values())), digest.hexdigest(), stats)


def _deduplicate(
    labelled: list[tuple[str, bytes]], stats: dict[str, int]
) -> dict[str, list[bytes]]:
    """Keep each text once; drop texts seen under more than one label."""
    first_label: dict[bytes, str] = {}
    conflicted: set[bytes] = set()
    for label, text in labelled:
        if first_label.setdefault(text, label) != label:
            conflicted.add(text)
    texts: dict[str, list[bytes]] = {}
    taken: set[bytes] = set()
    for label, text in labelled:
        if text in conflicted:
            stats["conflicts"] += 1
        elif text in taken:
            stats["duplicates"] += 1
        else:
            taken.add(text)
            texts.setdefault(label, []).append(text)
    return texts


def stratified_order(
    labels: np.ndarray, rng: np.random.Generator, cap: int | None = None
) -> np.ndarray:
    """Indices of ``labels`` shuffled within each class (at most ``cap`` per class), the classes
    interleaved in proportion to their counts: the ``j``-th of ``n`` examples of a class sits at
    ``(j + 0.5) / n`` (ties by class), so every stretch holds the classes in proportion."""
    order = rng.permutation(len(labels))
    shuffled = labels[order]
    rank = np.zeros(len(order))
    keep = np.zeros(len(order), dtype=bool)
    for c in np.unique(shuffled):
        where = np.flatnonzero(shuffled == c)[:cap]
        rank[where] = (np.arange(len(where)) + 0.5) / len(where)
        keep[where] = True
    order, shuffled, rank = order[keep], shuffled[keep], rank[keep]
    return order[np.lexsort((shuffled, rank))]


@TASK.register(TextClassificationConfig)
class TextClassificationTask(ClassificationTask):
    """Fortune-cookie texts as byte sequences, classified by language or topic (LRA Text stand-in)."""

    paper = (
        "Tay et al., 2021, Long Range Arena: A Benchmark for Efficient Transformers, "
        "arXiv:2011.04006"
    )
    config: TextClassificationConfig
    num_symbols = 256

    def __init__(self, cfg: TextClassificationConfig, **kwargs: Any) -> None:
        self.corpus = read_corpus(cfg)
        self.classes, self.dropped_classes = self._choose_classes(cfg)
        self.num_classes = len(self.classes)
        super().__init__(cfg, **kwargs)

    def _choose_classes(self, cfg: TextClassificationConfig) -> tuple[list[str], dict[str, int]]:
        counts = {label: len(t) for label, t in self.corpus.texts.items()}
        if cfg.classes is not None:
            absent = [c for c in cfg.classes if not counts.get(c)]
            if absent:
                have = ", ".join(sorted(counts)) or "(none)"
                raise DataError(
                    f"task.classes: {absent[0]!r} has no texts in the {cfg.dataset!r} corpus; "
                    f"classes with texts: {have}"
                )
            return list(cfg.classes), {}
        order = list(LANGUAGE_PACKAGES) if cfg.dataset == "language" else sorted(counts)
        keep = [c for c in order if counts.get(c, 0) >= cfg.min_examples_per_class]
        dropped = {c: n for c, n in sorted(counts.items()) if c not in keep}
        if len(keep) < 2:
            raise DataError(
                f"task.min_examples_per_class: {cfg.min_examples_per_class} leaves "
                f"{len(keep)} class(es) of {cfg.dataset!r}; allowed: a value that keeps 2 or more "
                f"(class sizes: {dict(sorted(counts.items()))})"
            )
        return keep, dropped

    def generation_key(self) -> dict[str, Any]:
        key = super().generation_key()
        key["seq_len"] = self.config.seq_len  # texts are cut to seq_len - 1 bytes
        key["sources"] = self.corpus.fingerprint
        return key

    def generate(self, total: int, rng: np.random.Generator) -> Examples:
        texts = [t for c in self.classes for t in self.corpus.texts[c]]
        labels = np.array(
            [i for i, c in enumerate(self.classes) for _ in self.corpus.texts[c]], np.int64
        )
        cap = min(self.class_sizes().values()) if self.config.balance else None
        order = stratified_order(labels, rng, cap)
        if len(order) < total:
            each = f", balanced at {cap} each" if cap is not None else ""
            raise DataError(
                f"task 'text_classification': train_size + val_size + test_size = {total} "
                f"examples, but the pool holds {len(order)} ({self.num_classes} classes{each}); "
                f"allowed: a total <= {len(order)}"
            )
        chosen = order[:total]
        sequences = [np.frombuffer(texts[i], dtype=np.uint8) for i in chosen]
        return Examples.from_sequences(sequences, labels[chosen].tolist())

    def class_sizes(self) -> dict[str, int]:
        """Texts available per kept class (before balancing)."""
        return {c: len(self.corpus.texts[c]) for c in self.classes}

    def text(self, split: str, index: int) -> str:
        """Example ``index`` of ``split`` as text (a cut inside a character shows as U+FFFD)."""
        return self.splits[split].sequence(index).tobytes().decode("utf-8", errors="replace")

    def extra_info(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "dataset": cfg.dataset,
            "classes": list(self.classes),
            "class_sizes": self.class_sizes(),
            "dropped_classes": self.dropped_classes,
            "balanced": cfg.balance,
            "cut_to_bytes": cfg.seq_len - 1,
            "source": cfg.root or "dpkg",
            "source_files": self.corpus.files,
            "source_sha256": self.corpus.fingerprint,
            "corpus": dict(self.corpus.stats),
        }
