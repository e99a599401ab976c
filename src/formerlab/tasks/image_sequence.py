"""``image_sequence``: classify real images read as a sequence of pixels, an LRA "Image" stand-in.

Paper: Tay, Dehghani, Abnar, Shen, Bahri, Pham, Rao, Yang, Ruder, Metzler, "Long Range Arena: A
Benchmark for Efficient Transformers", ICLR 2021, arXiv:2011.04006 (its Image task: CIFAR-10 in grey
levels, 32×32 = 1,024 pixel tokens of 8 bits, 10 classes).

- ``dataset: fashion_mnist`` (default): Debian ``dataset-fashion-mnist``, the gzip IDX files in
  ``/usr/share/datasets/fashion-mnist`` (60,000 train + 10,000 test, 28×28, grey 0..255, 10 classes).
  The official test images are the test split; train and val are cut from the official train images.
- ``dataset: digits``: scikit-learn's 8×8 digits (1,797 images, grey 0..16), read from
  ``sklearn/datasets/data/digits.csv.gz`` inside the installed wheel (scikit-learn is not imported);
  train / val / test are all cut from the one pool.

``root`` replaces the installed files with a folder holding the same file names (the four IDX files,
or ``digits.csv.gz``). ``downsample: k`` averages k×k blocks (28 → 14 at k = 2: 196 tokens); then each
pixel ``v`` becomes level ``round(v / v_max * (levels - 1))`` (ties to even; v_max = 255 or 16), so 0
and v_max keep the extreme levels and ``levels = v_max + 1`` at ``downsample: 1`` is lossless. The
default 256 levels are LRA's 8 bits; digits then use 17 of them. The image is read row by row:
``CLS, level_1 + 2, ..`` (PAD = 0, CLS = 1), so ``seq_len >= (side / k)**2 + 1``.

Each source (official train, official test, the digits pool) is ordered by seed as in
:func:`~formerlab.tasks.text_classification.stratified_order` (shuffled within each class, classes
interleaved in proportion), and taken in that order; an image whose tokens equal one already taken
is skipped, so the splits share no example. Every source file's sha256 is in the cache key.

Differences from the paper: Fashion-MNIST or digits instead of CIFAR-10 (no download offline);
optional downsampling to CPU-sized sequences; a CLS token in front.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..config import join, param
from ..errors import ConfigError, DataError
from ..registry import TASK
from .classification import (
    ClassificationTask,
    ClassificationTaskConfig,
    Examples,
    check_min,
    symbols_array,
)
from .text_classification import stratified_order

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DIGITS_FILE = "digits.csv.gz"
#: images taken (tokenised, checked for repeats) at a time
CHUNK = 4096


@dataclass(frozen=True)
class ImageSource:
    """Facts of a dataset: image side, top grey value, images in its pools."""

    side: int
    max_value: int
    train_images: int  # the pool train (and val; for digits also test) are cut from
    test_images: int | None  # an official test set, or None


SOURCES = {
    "fashion_mnist": ImageSource(side=28, max_value=255, train_images=60_000, test_images=10_000),
    "digits": ImageSource(side=8, max_value=16, train_images=1_797, test_images=None),
}


@dataclass(kw_only=True)
class ImageSequenceConfig(ClassificationTaskConfig):
    """Real grey images (Fashion-MNIST or digits) as pixel sequences, 10 classes."""

    kind: ClassVar[str] = "image_sequence"
    seq_len: int = param(197, doc="tokens per example: (side / downsample)**2 pixels + CLS")
    dataset: Literal["fashion_mnist", "digits"] = param(
        "fashion_mnist", doc="fashion_mnist: Debian 28x28; digits: scikit-learn's 8x8"
    )
    downsample: int = param(2, doc="average k x k pixel blocks (k divides the image side)")
    levels: int = param(256, doc="grey levels (pixel tokens); 256 = LRA's 8 bits")
    root: str | None = param(None, doc="folder holding the dataset's files; null: installed ones")

    def side(self) -> int:
        """Image side after downsampling."""
        return SOURCES[self.dataset].side // self.downsample

    def validate(self, path: str = "") -> None:
        super().validate(path)
        src = SOURCES[self.dataset]
        if self.downsample < 1 or src.side % self.downsample:
            divisors = [k for k in range(1, src.side + 1) if src.side % k == 0]
            raise ConfigError(
                f"{join(path, 'downsample')}: invalid value {self.downsample!r}; {self.dataset} "
                f"images are {src.side}x{src.side}; allowed: {', '.join(map(str, divisors))}"
            )
        if not 2 <= self.levels <= 1 << 15:
            raise ConfigError(
                f"{join(path, 'levels')}: invalid value {self.levels!r}; allowed: 2 .. 32768"
            )
        check_min(path, "seq_len", self.seq_len, self.side() ** 2 + 1)
        if self.root is not None and not self.root.strip():
            raise ConfigError(
                f"{join(path, 'root')}: invalid value {self.root!r}; allowed: null or a folder"
            )
        self._check_sizes(path, src)

    def _check_sizes(self, path: str, src: ImageSource) -> None:
        if src.test_images is None:
            total = self.train_size + self.val_size + self.test_size
            if total > src.train_images:
                raise ConfigError(
                    f"{join(path, 'train_size')}: train_size + val_size + test_size = {total} "
                    f"but {self.dataset} has {src.train_images} images; allowed: a total <= "
                    f"{src.train_images}"
                )
            return
        if self.train_size + self.val_size > src.train_images:
            raise ConfigError(
                f"{join(path, 'train_size')}: train_size + val_size = "
                f"{self.train_size + self.val_size} but {self.dataset} has {src.train_images} "
                f"training images; allowed: a total <= {src.train_images}"
            )
        check_max(path, "test_size", self.test_size, src.test_images)


def check_max(path: str, name: str, value: int, high: int) -> None:
    if value > high:
        raise ConfigError(f"{join(path, name)}: invalid value {value!r}; allowed: <= {high}")


# -- reading ---------------------------------------------------------------------------------------


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (gzip) with ``ndim`` dimensions; DataError if malformed."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {str(path)!r} ({exc})") from None
    head = 4 + 4 * ndim
    if len(data) < head or data[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(f"{str(path)!r} is not an unsigned-byte IDX file with {ndim} dimension(s)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - head != int(np.prod(shape)):
        raise DataError(f"{str(path)!r}: {len(data) - head} data bytes for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape)


def digits_folder() -> Path | None:
    """The folder of scikit-learn's bundled data files, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "datasets" / "data"


def source_files(cfg: ImageSequenceConfig) -> list[Path]:
    """The dataset's files (existing); DataError saying what to install otherwise."""
    if cfg.dataset == "fashion_mnist":
        folder = Path(cfg.root or FASHION_DIR)
        files = [folder / n for pair in FASHION_FILES.values() for n in pair]
        how = "apt-get install -y dataset-fashion-mnist"
    else:
        folder = Path(cfg.root) if cfg.root else digits_folder()
        files = [folder / DIGITS_FILE] if folder is not None else []
        how = "pip install scikit-learn"
    missing = [str(f) for f in files if not f.is_file()] or ([] if files else [DIGITS_FILE])
    if missing:
        where = "task.root" if cfg.root else f"the {cfg.dataset} files"
        raise DataError(
            f"task.dataset: {cfg.dataset!r} needs {', '.join(missing)} ({where}); install it "
            f"with: {how}  (or set task.root to a folder holding those files)"
        )
    return files


def read_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``digits.csv.gz``: rows of 64 pixel values 0..16 and the class 0..9."""
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"cannot read {str(path)!r} ({exc})") from None
    if table.shape[1] != 65 or table.min() < 0 or table[:, :64].max() > 16:
        raise DataError(f"{str(path)!r}: expected rows of 64 pixels in 0..16 and a class")
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64].astype(np.int64)


def pixel_tokens(images: np.ndarray, max_value: int, levels: int, downsample: int) -> np.ndarray:
    """(n, S, S) grey values 0..max_value -> (n, (S/k)**2) levels, k×k means, row-major."""
    n, side = images.shape[0], images.shape[1] // downsample
    blocks = images.reshape(n, side, downsample, side, downsample).astype(np.float64)
    grey = blocks.mean(axis=(2, 4)) / max_value
    return np.rint(grey * (levels - 1)).astype(np.int64).reshape(n, side * side)


@TASK.register(ImageSequenceConfig)
class ImageSequenceTask(ClassificationTask):
    """Fashion-MNIST or digits as pixel sequences (LRA Image stand-in), 10 classes."""

    paper = (
        "Tay et al., 2021, Long Range Arena: A Benchmark for Efficient Transformers, "
        "arXiv:2011.04006"
    )
    config: ImageSequenceConfig
    num_classes = 10

    def __init__(self, cfg: ImageSequenceConfig, **kwargs: Any) -> None:
        self.num_symbols = cfg.levels
        self.files = source_files(cfg)
        self.fingerprint = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in self.files}
        super().__init__(cfg, **kwargs)

    def generation_key(self) -> dict[str, Any]:
        return {**super().generation_key(), "sources": self.fingerprint}

    def read(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Images and labels per source ("train", and "test" where there is an official one)."""
        if self.config.dataset == "digits":
            return {"train": read_digits(self.files[0])}
        out, folder = {}, self.files[0].parent
        for split, (images, labels) in FASHION_FILES.items():
            x, y = read_idx(folder / images, 3), read_idx(folder / labels, 1)
            if len(x) != len(y) or x.shape[1:] != (28, 28) or y.max(initial=0) > 9:
                raise DataError(f"{images}: {x.shape} images for {y.shape} labels 0..9")
            out[split] = (x, y.astype(np.int64))
        return out

    def generate(self, total: int, rng: np.random.Generator) -> Examples:
        cfg = self.config
        data: dict[str, tuple[np.ndarray, np.ndarray]] = self.read()
        seen: set[bytes] = set()
        if "test" in data:
            train = self._take(*data["train"], cfg.train_size + cfg.val_size, rng, seen, "train")
            test = self._take(*data["test"], cfg.test_size, rng, seen, "test")
            rows, labels = np.concatenate([train[0], test[0]]), np.concatenate([train[1], test[1]])
        else:
            rows, labels = self._take(*data["train"], total, rng, seen, "all")
        width = cfg.side() ** 2
        return Examples(
            symbols_array(rows.reshape(-1)), np.arange(total + 1, dtype=np.int64) * width, labels
        )

    def _take(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        count: int,
        rng: np.random.Generator,
        seen: set[bytes],
        what: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``count`` images in stratified order whose tokens are not in ``seen``."""
        cfg = self.config
        order = stratified_order(labels, rng)
        rows, kept = [], []
        for start in range(0, len(order), CHUNK):
            chunk = order[start : start + CHUNK]
            tokens = pixel_tokens(
                images[chunk], SOURCES[cfg.dataset].max_value, cfg.levels, cfg.downsample
            )
            for row, index in zip(tokens, chunk, strict=True):
                key = row.tobytes()
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
                    kept.append(index)
                    if len(rows) == count:
                        return np.stack(rows), labels[np.array(kept)]
        raise DataError(
            f"task 'image_sequence': {count} distinct images wanted from the {cfg.dataset} {what} "
            f"images, only {len(rows)} there; allowed: a smaller size"
        )

    def image(self, split: str, index: int) -> np.ndarray:
        """Example ``index`` of ``split`` as a (side, side) array of grey levels."""
        side = self.config.side()
        return self.splits[split].sequence(index).astype(np.int64).reshape(side, side)

    def extra_info(self) -> dict[str, Any]:
        cfg = self.config
        src = SOURCES[cfg.dataset]
        return {
            "dataset": cfg.dataset,
            "image_side": src.side,
            "downsample": cfg.downsample,
            "side": cfg.side(),
            "levels": cfg.levels,
            "test_split": "official test images" if src.test_images else "cut from the pool",
            "source_files": {str(f): self.fingerprint[f.name] for f in self.files},
        }
