"""image_sequence: pixel tokens (quantisation, downsampling, row-major order), the IDX and digits
readers, the official test split, distinct and stratified splits, determinism, the cache and its
source fingerprint, missing-data and config errors, and the shipped run file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import formerlab as fl
from formerlab.errors import ConfigError, DataError
from formerlab.registry import TASK
from formerlab.tasks import image_sequence as isq
from formerlab.tasks.image_sequence import (
    FASHION_DIR,
    ImageSequenceConfig,
    ImageSequenceTask,
    pixel_tokens,
    read_idx,
)
from formerlab.train import train

REPO = Path(__file__).resolve().parents[2]


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def write_fashion(root: Path, train: tuple, test: tuple) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for (images_name, labels_name), (x, y) in zip(
        isq.FASHION_FILES.values(), (train, test), strict=True
    ):
        (root / images_name).write_bytes(idx_bytes(x))
        (root / labels_name).write_bytes(idx_bytes(y))
    return root


def fake_images(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    return rng.integers(low, high, size=(n, 28, 28))


@pytest.fixture
def fashion(tmp_path: Path) -> Path:
    """80 train images (grey 0..127, 8 per class) and 30 test images (128..255, 3 per class)."""
    rng = np.random.default_rng(0)
    train_set = (fake_images(rng, 80, 0, 128), np.arange(80) % 10)
    test_set = (fake_images(rng, 30, 128, 256), np.arange(30) % 10)
    return write_fashion(tmp_path / "fashion", train_set, test_set)


def make(root: Path, seed: int = 0, **fields: object) -> ImageSequenceTask:
    cfg = {
        "kind": "image_sequence",
        "root": str(root),
        "train_size": 50,
        "val_size": 20,
        "test_size": 20,
        "eval_batches": 2,
        **fields,
    }
    return TASK.build(cfg, seed=seed)


def write_digits(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = np.concatenate([images.reshape(len(images), 64), labels[:, None]], axis=1)
    text = "\n".join(",".join(f"{v:.1f}" for v in row) for row in rows) + "\n"
    (root / "digits.csv.gz").write_bytes(gzip.compress(text.encode()))
    return root


# -- pixel tokens ------------------------------------------------------------------------------------


def test_tokens_are_row_major_and_lossless_at_native_levels() -> None:
    image = np.array([[[0, 5], [16, 9]]])
    assert pixel_tokens(image, 16, 17, 1).tolist() == [[0, 5, 16, 9]]
    full = np.arange(256).reshape(1, 16, 16)
    assert np.array_equal(pixel_tokens(full, 255, 256, 1), full.reshape(1, 256))


def test_quantisation_maps_zero_and_max_to_the_extreme_levels() -> None:
    image = np.array([[[0, 128], [255, 64]]])
    # 128/255*3 = 1.506 -> 2; 64/255*3 = 0.753 -> 1
    assert pixel_tokens(image, 255, 4, 1).tolist() == [[0, 2, 3, 1]]
    # digits at 256 levels: v -> round(v * 255 / 16): 8 -> 127.5 -> 128 (ties to even), 1 -> 16
    assert pixel_tokens(np.array([[[8, 1], [16, 0]]]), 16, 256, 1).tolist() == [[128, 16, 255, 0]]


def test_downsampling_averages_blocks() -> None:
    image = np.array([[[0, 255, 10, 20], [255, 255, 30, 40], [1, 1, 0, 0], [1, 1, 0, 4]]])
    # block means: 191.25, 25, 1, 1  (levels 256 -> rounded)
    assert pixel_tokens(image, 255, 256, 2).tolist() == [[191, 25, 1, 1]]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 28, 28))
    got = pixel_tokens(images, 255, 256, 4).reshape(3, 7, 7)
    for n in range(3):
        for r in range(7):
            for c in range(7):
                mean = images[n, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].sum() / 16
                assert got[n, r, c] == np.rint(mean), (n, r, c)


def test_batches_are_cls_then_levels_plus_two(fashion: Path) -> None:
    task = make(fashion, downsample=1, seq_len=785)
    assert task.vocab_size == 258
    batch = task.batch("val", 0, 4)
    assert batch["input_ids"].shape == (4, 785) and bool(batch["attention_mask"].all())
    train_x = read_idx(fashion / "train-images-idx3-ubyte.gz", 3)
    for row, label, i in zip(batch["input_ids"], batch["labels"], range(4), strict=True):
        assert row[0] == 1
        pixels = (row[1:] - 2).numpy().reshape(28, 28)
        match = [j for j in range(80) if np.array_equal(train_x[j], pixels)]
        assert len(match) == 1 and match[0] % 10 == int(label)  # the fixture's label
        assert np.array_equal(task.image("val", i), pixels)


# -- splits ------------------------------------------------------------------------------------------


def test_official_test_images_are_the_test_split(fashion: Path) -> None:
    task = make(fashion, downsample=1, seq_len=785)
    for split in ("train", "val"):  # the fixture's train images are dark, its test ones bright
        assert task.splits[split].symbols.max() < 128
    assert task.splits["test"].symbols.min() >= 128
    assert len(task.splits["test"]) == 20
    assert task.data_info()["test_split"] == "official test images"


def test_splits_are_stratified_and_deterministic(fashion: Path) -> None:
    task = make(fashion)
    counts = {s: np.bincount(task.splits[s].labels, minlength=10) for s in task.splits}
    assert counts["val"].tolist() == [2] * 10 and counts["test"].tolist() == [2] * 10
    assert counts["train"].tolist() == [5] * 10
    other_seed = make(fashion, seed=4, cache=False)
    other_data = make(fashion, data_seed=1, cache=False)
    assert task.pool.sha256() == other_seed.pool.sha256() != other_data.pool.sha256()


def test_repeated_images_are_kept_once_across_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = fake_images(rng, 40, 0, 256)
    x[1::2] = x[0::2]  # every image twice (same label below)
    test_x = fake_images(rng, 20, 0, 256)
    test_x[:10] = x[:20:2]  # half the test images are train images
    root = write_fashion(tmp_path / "f", (x, np.arange(40) // 2 % 10), (test_x, np.arange(20) % 10))
    task = make(root, train_size=15, val_size=5, test_size=10, downsample=1, seq_len=785)
    rows = [task.pool.sequence(i).tobytes() for i in range(len(task.pool))]
    assert len(set(rows)) == len(rows) == 30
    with pytest.raises(DataError, match=r"21 distinct images wanted .* only 20 there"):
        make(root, train_size=16, val_size=5, test_size=5, downsample=1, seq_len=785)


def test_digits_file_is_read_and_cut_by_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 17, size=(30, 8, 8))
    labels = np.arange(30) % 3
    images[:, 0, 0] = labels  # the class is visible in the first pixel
    root = write_digits(tmp_path / "digits", images, labels)
    task = make(
        root,
        dataset="digits",
        downsample=1,
        levels=17,
        seq_len=65,
        train_size=18,
        val_size=6,
        test_size=6,
    )
    assert task.data_info()["test_split"] == "cut from the pool"
    seen = set()
    for split in task.splits:
        ex = task.splits[split]
        assert np.bincount(ex.labels, minlength=3).tolist() == [len(ex) // 3] * 3
        for i in range(len(ex)):
            pixels = ex.sequence(i).astype(np.int64)
            assert pixels[0] == ex.labels[i]
            seen.add(pixels.tobytes())
    assert seen == {im.reshape(64).astype(np.int64).tobytes() for im in images}


# -- cache and fingerprint ---------------------------------------------------------------------------


def test_cache_hit_and_a_changed_file_regenerates(
    fashion: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make(fashion)
    assert not first.cache_hit

    def fail(*args: object) -> None:
        raise AssertionError("generated again")

    with monkeypatch.context() as m:
        m.setattr(ImageSequenceTask, "generate", fail)
        again = make(fashion, eval_batches=4)
        assert again.cache_hit and again.pool.sha256() == first.pool.sha256()
    rng = np.random.default_rng(9)
    write_fashion(
        fashion,
        (fake_images(rng, 80, 0, 128), np.arange(80) % 10),
        (fake_images(rng, 30, 128, 256), np.arange(30) % 10),
    )
    changed = make(fashion)
    assert changed.cache_path() != first.cache_path() and not changed.cache_hit
    assert changed.pool.sha256() != first.pool.sha256()
    assert make(fashion, levels=16).cache_path() != changed.cache_path()


# -- errors ------------------------------------------------------------------------------------------


def test_missing_fashion_files_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"apt-get install -y dataset-fashion-mnist"):
        make(tmp_path / "empty")


def test_missing_scikit_learn_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isq, "digits_folder", lambda: None)
    with pytest.raises(DataError, match=r"'digits' needs digits.csv.gz .*pip install scikit-learn"):
        TASK.build(
            {
                "kind": "image_sequence",
                "dataset": "digits",
                "train_size": 10,
                "val_size": 5,
                "test_size": 5,
            }
        )


def test_malformed_idx_file_is_a_data_error(fashion: Path) -> None:
    path = fashion / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (30).to_bytes(4, "big") + bytes(29)))
    with pytest.raises(DataError, match=r"29 data bytes for shape \(30,\)"):
        make(fashion)
    path.write_bytes(gzip.compress(bytes([0, 0, 9, 1]) + bytes(8)))
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        make(fashion)
    path.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        make(fashion)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dataset": "cifar10"}, r"task.dataset: invalid value 'cifar10'"),
        ({"downsample": 3}, r"task.downsample: invalid value 3; .*allowed: 1, 2, 4, 7, 14, 28"),
        ({"downsample": 0}, r"task.downsample: invalid value 0"),
        ({"levels": 1}, r"task.levels: invalid value 1; allowed: 2 .. 32768"),
        ({"seq_len": 196}, r"task.seq_len: invalid value 196; allowed: >= 197"),
        ({"downsample": 1}, r"task.seq_len: invalid value 197; allowed: >= 785"),
        ({"test_size": 10_001}, r"task.test_size: invalid value 10001; allowed: <= 10000"),
        ({"train_size": 59_500}, r"task.train_size: train_size \+ val_size = 60500 .*<= 60000"),
        (
            {"dataset": "digits", "seq_len": 17},
            r"task.train_size: train_size \+ val_size \+ test_size = 12000 .*<= 1797",
        ),
        ({"root": ""}, r"task.root: invalid value ''; allowed: null or a folder"),
    ],
)
def test_config_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageSequenceConfig.from_dict(fields, "task")


# -- the run file and the real data ------------------------------------------------------------------


def test_image_tiny_run_file_trains_on_fixture_files(fashion: Path, tmp_path: Path) -> None:
    path = REPO / "configs" / "repro" / "lra" / "image-tiny.yaml"
    run = fl.load_config(path)
    assert run.task.kind == "image_sequence" and run.model.max_seq_len == run.task.seq_len
    small = [
        f"task.root={fashion}",
        "task.train_size=40",
        "task.val_size=10",
        "task.test_size=10",
        "task.eval_batches=2",
        "train.steps=3",
        "train.threads=1",
        "train.batch_size=4",
        "train.schedule.warmup_steps=1",
        "train.eval_every=0",
        "train.checkpoint_every=0",
    ]
    summary = train(fl.load_config(path, small), tmp_path / "run", progress=False)
    assert summary["final_step"] == 3 and summary["data"]["side"] == 14
    assert {"accuracy", "majority_baseline"} <= set(summary["val"])


@pytest.mark.skipif(
    not Path(FASHION_DIR, "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs Fashion-MNIST: apt-get install -y dataset-fashion-mnist",
)
def test_real_fashion_mnist() -> None:
    task = TASK.build(
        {"kind": "image_sequence", "train_size": 500, "val_size": 100, "test_size": 100}
    )
    assert [len(task.splits[s]) for s in ("train", "val", "test")] == [500, 100, 100]
    assert np.bincount(task.splits["val"].labels).tolist() == [10] * 10
    batch = task.batch("train", 0, 8)
    assert batch["input_ids"].shape == (8, 197) and int(batch["input_ids"].max()) < 258
    assert torch.all(batch["input_ids"][:, 0] == 1)


@pytest.mark.slow  # imports scikit-learn (seconds)
@pytest.mark.skipif(
    isq.digits_folder() is None, reason="needs scikit-learn: pip install scikit-learn"
)
def test_real_digits_match_scikit_learn() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    task = TASK.build(
        {
            "kind": "image_sequence",
            "dataset": "digits",
            "downsample": 1,
            "levels": 17,
            "seq_len": 65,
            "train_size": 1297,
            "val_size": 250,
            "test_size": 250,
        }
    )
    ours = {
        task.pool.sequence(i).astype(np.int64).tobytes(): int(task.pool.labels[i])
        for i in range(len(task.pool))
    }
    theirs = {
        im.astype(np.int64).reshape(64).tobytes(): int(t)
        for im, t in zip(digits.images, digits.target, strict=True)
    }
    assert ours == theirs
