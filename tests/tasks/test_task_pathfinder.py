"""pathfinder: labels checked by an independent flood fill, balance, determinism, distinct splits,
pixel-sequence layout, curve geometry and config errors."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from formerlab.errors import ConfigError, DataError
from formerlab.registry import TASK
from formerlab.tasks.pathfinder import (
    CurveParams,
    PathfinderConfig,
    PathfinderTask,
    draw_pathfinder,
    random_curves,
)

SMALL = {
    "kind": "pathfinder",
    "train_size": 120,
    "val_size": 40,
    "test_size": 40,
    "eval_batches": 2,
}


def make(**fields: object) -> PathfinderTask:
    return TASK.build({**SMALL, **fields}, seed=0)


def reachable(ink: np.ndarray, start: tuple[int, int]) -> set[tuple[int, int]]:
    """Pixels 8-connected to ``start`` through ``ink``."""
    size = ink.shape[0]
    seen, queue = {start}, deque([start])
    while queue:
        y, x = queue.popleft()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                q = (y + dy, x + dx)
                if 0 <= q[0] < size and 0 <= q[1] < size and ink[q] and q not in seen:
                    seen.add(q)
                    queue.append(q)
    return seen


def markers_connected(image: np.ndarray, levels: int) -> bool:
    marks = [tuple(int(v) for v in p) for p in np.argwhere(image == levels - 1)]
    assert len(marks) >= 8  # two 3x3 squares, possibly clipped at the border or overlapping
    seen = reachable(image > 0, marks[0])
    return all(m in seen for m in marks)


@pytest.mark.parametrize(("size", "levels"), [(16, 256), (32, 256), (16, 4)])
def test_labels_are_exactly_marker_connectivity(size: int, levels: int) -> None:
    task = make(
        image_size=size, seq_len=size * size + 1, levels=levels, train_size=100, cache=False
    )
    for split in ("train", "val"):
        ex = task.splits[split]
        for i in range(len(ex)):
            assert markers_connected(task.image(split, i), levels) == bool(ex.labels[i]), (split, i)


def test_markers_are_the_only_top_level_pixels_and_curves_sit_between() -> None:
    task = make(levels=8, cache=False)
    symbols = task.pool.symbols
    assert symbols.max() == 7 and set(np.unique(symbols)) <= set(range(8))
    image = task.image("train", 0)
    curve = (image > 0) & (image < 7)
    assert curve.sum() >= 10  # the curves are drawn at intermediate levels


def test_labels_are_balanced_in_every_split() -> None:
    task = make(train_size=121, val_size=40, test_size=39)
    for split in ("train", "val", "test"):
        counts = np.bincount(task.splits[split].labels, minlength=2)
        assert abs(int(counts[1]) - int(counts[0])) <= 1, (split, counts)
    assert task.majority_baseline("val") == 0.5


def test_deterministic_by_data_seed() -> None:
    a = make(cache=False)
    b = PathfinderTask(PathfinderConfig.from_dict({**SMALL, "cache": False}), seed=5)
    c = make(cache=False, data_seed=1)
    assert a.pool.sha256() == b.pool.sha256() != c.pool.sha256()


def test_splits_hold_distinct_images() -> None:
    task = make()
    rows = [task.pool.sequence(i).tobytes() for i in range(len(task.pool))]
    assert len(set(rows)) == len(rows) == 200


def test_batches_are_cls_then_the_pixels_row_by_row() -> None:
    task = make()
    assert task.vocab_size == 258
    batch = task.batch("val", 1, 4)
    assert batch["input_ids"].shape == (4, 257) and bool(batch["attention_mask"].all())
    for row, index in zip(batch["input_ids"], range(4, 8), strict=True):
        assert row[0] == 1
        assert torch.equal(row[1:], torch.from_numpy(task.image("val", index).ravel() + 2))
    assert batch["labels"].tolist() == task.splits["val"].labels[4:8].tolist()


def test_cache_hit_without_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    first = make()

    def fail(*args: object) -> None:
        raise AssertionError("generated again")

    monkeypatch.setattr(PathfinderTask, "generate", fail)
    again = make()
    assert again.cache_hit and again.pool.sha256() == first.pool.sha256()


def test_curves_are_8_connected_chains_inside_the_image() -> None:
    p = PathfinderConfig(image_size=16).curve_params()
    chains, inside = random_curves(np.random.default_rng(0), 200, 8, p)
    assert inside.mean() > 0.5
    for chain in chains[inside]:
        assert chain.min() >= 0 and chain.max() <= 15
        assert np.abs(np.diff(chain, axis=0)).max() <= 1


def test_draw_gives_one_image_per_label_with_two_markers() -> None:
    p = CurveParams(
        size=32,
        contour_length=14,
        paddle_length=2.0,
        distractor_length=4,
        num_distractor_snakes=5,
        continuity=0.6,
    )
    connected = np.array([True, False] * 20)
    images = draw_pathfinder(np.random.default_rng(3), p, connected)
    assert images.shape == (40, 32, 32) and images.min() == 0.0 and images.max() == 1.0
    for image, link in zip(images, connected, strict=True):
        assert markers_connected(np.rint(image * 255).astype(int), 256) == link


def test_data_info_reports_the_resolved_drawing_parameters() -> None:
    info = make(image_size=32, seq_len=1025, num_distractor_snakes=2).data_info()
    assert info["curve_params"]["contour_length"] == 14
    assert info["curve_params"]["num_distractor_snakes"] == 2
    assert info["splits"]["train"]["class_counts"] == [60, 60]
    assert 0 < info["marker_fraction"] < info["ink_fraction"] < 0.5


def test_curves_that_cannot_fit_are_a_data_error() -> None:
    with pytest.raises(DataError, match="contour_length=40 do not fit in a 16x16 image"):
        make(contour_length=40, continuity=0.0, train_size=2, val_size=1, test_size=1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"seq_len": 256}, r"task.seq_len: invalid value 256; .*allowed: >= 257"),
        ({"image_size": 32}, r"task.seq_len: invalid value 257; .*allowed: >= 1025"),
        ({"image_size": 24}, r"task.image_size: invalid value 24; allowed: 16 \| 32"),
        ({"levels": 2}, r"task.levels: invalid value 2; allowed: 3 .. 32768"),
        ({"continuity": 4.0}, r"task.continuity: invalid value 4.0; allowed: 0 .. pi"),
        (
            {"paddle_length": 5.0},
            r"task.paddle_length: invalid value 5.0; allowed: null or 0.5 .. 4",
        ),
        ({"contour_length": 0}, r"task.contour_length: invalid value 0; allowed: null or >= 1"),
        ({"num_distractor_snakes": -1}, r"task.num_distractor_snakes: invalid value -1"),
    ],
)
def test_config_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PathfinderConfig.from_dict({**SMALL, **fields}, "task")
