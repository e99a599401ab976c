"""``pathfinder``: are the two marked dots joined by one curve? Curve-tracing images made here.

Paper: Tay et al., "Long Range Arena: A Benchmark for Efficient Transformers", ICLR 2021,
arXiv:2011.04006 (Pathfinder: Linsley, Kim, Veerabadran, Windolf, Serre, "Learning long-range spatial
dependencies with horizontal gated recurrent units", NeurIPS 2018, arXiv:1805.08315).

An image (16×16 or 32×32, grey levels) holds two target curves, ``num_distractor_snakes`` shorter
distractor curves and two markers (3×3 squares at the brightest level). A curve ("snake") is a
polyline of ``contour_length`` segments of ``paddle_length`` pixels whose direction turns by at most
``continuity`` radians per segment; it is drawn as an 8-connected pixel chain at a random grey level.
Label 1: the markers sit on both ends of the first target curve; label 0: one on an end of each
target curve. Every curve (with its markers) keeps at least one background pixel from everything
else (placement is rejected and retried otherwise), so the label is exactly "the two markers are
8-connected through non-background pixels". Labels alternate 1, 0, 1, ... through the pool, so each
split is balanced (off by at most one); the pool holds distinct images (a repeat, vanishingly rare at
these sizes, is dropped).

The image is read row by row: ``CLS, pixel_1, .., pixel_{S*S}`` with pixel level ``q`` in
``0 .. levels-1`` as token ``q + 2`` (PAD = 0, CLS = 1), so ``seq_len >= S*S + 1`` (257 or 1025).

Differences from the paper: a simplified, independent generator (LRA used drewlinsley/pathfinder):
solid curves (no dashed "paddles" with gaps), no antialiasing, no single-paddle distractors, square
markers, no fixed distance between the target curves' seeds; the knob names follow LRA's.
Generation is vectorised over 1024 images at a time (1,000-2,000 images a second on one core).
"""

from __future__ import annotations

from dataclasses import dataclass
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

#: per-size defaults of the fields left null
SIZE_DEFAULTS: dict[int, dict[str, Any]] = {
    16: {
        "contour_length": 8,
        "paddle_length": 1.5,
        "distractor_length": 3,
        "num_distractor_snakes": 3,
    },
    32: {
        "contour_length": 14,
        "paddle_length": 2.0,
        "distractor_length": 4,
        "num_distractor_snakes": 5,
    },
}
#: grey level range of curves (markers are at 1.0, the background at 0)
CURVE_CONTRAST = (0.4, 0.8)


@dataclass(frozen=True)
class CurveParams:
    """The resolved drawing parameters of one image size."""

    size: int
    contour_length: int
    paddle_length: float
    distractor_length: int
    num_distractor_snakes: int
    continuity: float


@dataclass(kw_only=True)
class PathfinderConfig(ClassificationTaskConfig):
    """Pathfinder-like images: are the two markers on one curve? (2 classes)"""

    kind: ClassVar[str] = "pathfinder"
    seq_len: int = param(257, doc="tokens per example: image_size**2 pixels + CLS")
    image_size: Literal[16, 32] = param(16, doc="image side in pixels")
    contour_length: int | None = param(
        None, doc="segments per target curve; null: 8 (16px), 14 (32px)"
    )
    paddle_length: float | None = param(
        None, doc="segment length in pixels; null: 1.5 (16px), 2 (32px)"
    )
    distractor_length: int | None = param(
        None, doc="segments per distractor; null: 3 (16px), 4 (32px)"
    )
    num_distractor_snakes: int | None = param(
        None, doc="distractor curves; null: 3 (16px), 5 (32px)"
    )
    continuity: float = param(0.6, doc="largest turn between consecutive segments, radians")
    levels: int = param(256, doc="grey levels (pixel tokens)")

    def validate(self, path: str = "") -> None:
        super().validate(path)
        need = self.image_size**2 + 1
        if self.seq_len < need:
            raise ConfigError(
                f"{join(path, 'seq_len')}: invalid value {self.seq_len!r}; a {self.image_size}x"
                f"{self.image_size} image is {need - 1} pixels + CLS; allowed: >= {need}"
            )
        check_min(path, "contour_length", self.contour_length, 1, nullable=True)
        check_min(path, "distractor_length", self.distractor_length, 1, nullable=True)
        check_min(path, "num_distractor_snakes", self.num_distractor_snakes, 0, nullable=True)
        if self.paddle_length is not None and not 0.5 <= self.paddle_length <= self.image_size / 4:
            raise ConfigError(
                f"{join(path, 'paddle_length')}: invalid value {self.paddle_length!r}; allowed: null "
                f"or 0.5 .. {self.image_size / 4}"
            )
        if not 0.0 <= self.continuity <= np.pi:
            raise ConfigError(
                f"{join(path, 'continuity')}: invalid value {self.continuity!r}; allowed: 0 .. pi"
            )
        if not 3 <= self.levels <= 1 << 15:
            raise ConfigError(
                f"{join(path, 'levels')}: invalid value {self.levels!r}; allowed: 3 .. 32768"
            )

    def curve_params(self) -> CurveParams:
        """The drawing parameters, nulls replaced by the image size's defaults."""
        defaults = SIZE_DEFAULTS[self.image_size]
        pick = {k: v if (v := getattr(self, k)) is not None else d for k, d in defaults.items()}
        return CurveParams(size=self.image_size, continuity=self.continuity, **pick)


# -- drawing ---------------------------------------------------------------------------------------

#: offsets of a pixel's 3×3 neighbourhood (a marker is the neighbourhood of a curve's end)
NEIGHBOURS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
#: candidate curves drawn at once; a placement gives up after PLACEMENT_ROUNDS such draws
CANDIDATES = 8
PLACEMENT_ROUNDS = 8
#: images whose target curves do not fit are drawn again at most this many times
IMAGE_TRIES = 100
#: most images drawn per call of the vectorised generator (an even number)
CHUNK = 1024


def neighbourhood(pixels: np.ndarray, size: int) -> np.ndarray:
    """(..., 2) pixels -> (..., 9, 2): each pixel's 3×3 neighbourhood, clipped to the image."""
    return np.clip(pixels[..., None, :] + NEIGHBOURS, 0, size - 1)


def pieces(p: CurveParams) -> int:
    """Samples per segment: at most 0.5 px apart, so consecutive rounded samples touch."""
    return int(np.ceil(p.paddle_length / 0.5))


def random_curves(
    rng: np.random.Generator, n: int, segments: int, p: CurveParams
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random polylines as 8-connected pixel chains (n, K, 2), each moved to a uniform
    position where it fits, and whether it fits at all."""
    turns = rng.uniform(-p.continuity, p.continuity, size=(n, segments))
    angles = rng.uniform(0, 2 * np.pi, size=(n, 1)) + np.cumsum(turns, axis=1)
    steps = p.paddle_length * np.stack([np.sin(angles), np.cos(angles)], axis=-1)  # (n, S, 2)
    shape = np.concatenate([np.zeros((n, 1, 2)), np.cumsum(steps, axis=1)], axis=1)
    low, high = shape.min(axis=1), shape.max(axis=1)  # (n, 2) bounding box
    room = (p.size - 1) - (high - low)
    corners = shape - low[:, None] + (rng.uniform(size=(n, 2)) * np.maximum(room, 0))[:, None]
    t = (np.arange(pieces(p)) / pieces(p))[None, None, :, None]
    dense = corners[:, :-1, None, :] + t * np.diff(corners, axis=1)[:, :, None, :]
    chain = np.concatenate([dense.reshape(n, -1, 2), corners[:, -1:]], axis=1)
    return np.clip(np.rint(chain), 0, p.size - 1).astype(np.int64), (room >= 0).all(axis=1)


def hits(blocked: np.ndarray, images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Whether any of ``pixels`` (n, ..., M, 2) is blocked in its image ``images`` (n,)."""
    index = images.reshape(-1, *([1] * (pixels.ndim - 2)))
    return blocked[index, pixels[..., 0], pixels[..., 1]].any(axis=-1)


def block(blocked: np.ndarray, images: np.ndarray, pixels: np.ndarray) -> None:
    """Mark ``pixels`` (n, M, 2) of images ``images`` (n,), and every pixel touching them, taken."""
    near = neighbourhood(pixels, blocked.shape[1]).reshape(len(images), -1, 2)
    blocked[images[:, None], near[..., 0], near[..., 1]] = True


def place_curves(
    rng: np.random.Generator,
    p: CurveParams,
    segments: int,
    blocked: np.ndarray,
    images: np.ndarray,
    mark_end: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One curve per image in ``images``, clear of what is blocked there (where ``mark_end``, its
    end's marker too): pixels (n, K, 2) and whether each was placed (CANDIDATES per round)."""
    pixels = np.zeros((len(images), segments * pieces(p) + 1, 2), np.int64)
    placed = np.zeros(len(images), dtype=bool)
    for _ in range(PLACEMENT_ROUNDS):
        todo = np.flatnonzero(~placed)
        if not todo.size:
            break
        cand, fits = random_curves(rng, todo.size * CANDIDATES, segments, p)
        cand, fits = cand.reshape(todo.size, CANDIDATES, -1, 2), fits.reshape(todo.size, -1)
        fits &= ~hits(blocked, images[todo], cand)
        ends = neighbourhood(cand[:, :, -1], p.size)  # (n, C, 9, 2): the marker around the end
        fits &= ~(hits(blocked, images[todo], ends) & mark_end[todo, None])
        got = fits.any(axis=1)
        pixels[todo[got]] = cand[got, np.argmax(fits[got], axis=1)]
        placed[todo[got]] = True
    return pixels, placed


def markers(ends: np.ndarray, size: int) -> np.ndarray:
    """(n, m, 2) marked curve ends -> (n, 9m, 2) pixels of their 3×3 markers."""
    return neighbourhood(ends, size).reshape(len(ends), -1, 2)


def draw_targets(
    rng: np.random.Generator, p: CurveParams, connected: np.ndarray, blocked: np.ndarray
) -> tuple[list[np.ndarray], np.ndarray]:
    """Both target curves of every image ((n, K, 2) each) and the marked ends (n, 2, 2).
    An image whose curves do not fit is drawn again; ``blocked`` holds the result."""
    n, k = len(connected), p.contour_length * pieces(p) + 1
    a_all, b_all, ends = (np.zeros((n, m, 2), np.int64) for m in (k, k, 2))
    todo = np.arange(n)
    for _ in range(IMAGE_TRIES):
        blocked[todo] = False
        link = connected[todo, None, None]
        a, got_a = place_curves(rng, p, p.contour_length, blocked, todo, link[:, 0, 0])
        marked_a = np.where(link, a[:, [0, -1]], a[:, [0, 0]])
        block(blocked, todo, np.concatenate([a, markers(marked_a, p.size)], axis=1))
        b, got_b = place_curves(rng, p, p.contour_length, blocked, todo, ~link[:, 0, 0])
        marked = np.where(link, a[:, [0, -1]], np.stack([a[:, 0], b[:, -1]], axis=1))
        block(blocked, todo, np.concatenate([b, markers(marked, p.size)], axis=1))
        done = got_a & got_b
        a_all[todo[done]], b_all[todo[done]], ends[todo[done]] = a[done], b[done], marked[done]
        if not done.any() and todo.size == n:
            break  # not one image fits: hopeless, not unlucky
        todo = todo[~done]
        if not todo.size:
            return [a_all, b_all], ends
    raise DataError(
        f"task 'pathfinder': two curves of contour_length={p.contour_length} do not fit in a "
        f"{p.size}x{p.size} image; use shorter curves"
    )


def draw_pathfinder(rng: np.random.Generator, p: CurveParams, connected: np.ndarray) -> np.ndarray:
    """Images (n, size, size) of grey values in [0, 1], one per entry of the bool array
    ``connected``: markers 1.0, curves in CURVE_CONTRAST, background 0."""
    n, size = len(connected), p.size
    blocked = np.zeros((n, size, size), dtype=bool)
    targets, ends = draw_targets(rng, p, connected, blocked)
    everyone = np.arange(n)
    images = np.zeros((n, size, size))
    for pixels in targets:
        paint(images, everyone, pixels, rng.uniform(*CURVE_CONTRAST, size=n))
    for _ in range(p.num_distractor_snakes):
        pixels, placed = place_curves(
            rng, p, p.distractor_length, blocked, everyone, np.zeros(n, bool)
        )
        block(blocked, everyone[placed], pixels[placed])
        paint(
            images, everyone[placed], pixels[placed], rng.uniform(*CURVE_CONTRAST, size=n)[placed]
        )
    paint(images, everyone, markers(ends, size), np.ones(n))
    return images


def paint(images: np.ndarray, which: np.ndarray, pixels: np.ndarray, grey: np.ndarray) -> None:
    """Set ``pixels`` (n, M, 2) of images ``which`` (n,) to ``grey`` (n,)."""
    index = which[:, None]
    images[index, pixels[..., 0], pixels[..., 1]] = grey[:, None]


def quantise(image: np.ndarray, levels: int) -> np.ndarray:
    """Grey values -> levels 0..levels-1; curves never reach the markers' top level or background."""
    q = np.rint(image * (levels - 1)).astype(np.int64)
    curve = (image > 0) & (image < 1)
    q[curve] = np.clip(q[curve], 1, levels - 2)
    return q


@TASK.register(PathfinderConfig)
class PathfinderTask(ClassificationTask):
    """Pathfinder-like curve tracing (LRA): are the two markers joined by one curve?"""

    paper = (
        "Tay et al., 2021, Long Range Arena: A Benchmark for Efficient Transformers, "
        "arXiv:2011.04006"
    )
    config: PathfinderConfig
    num_classes = 2

    def __init__(self, cfg: PathfinderConfig, **kwargs: Any) -> None:
        self.num_symbols = cfg.levels
        super().__init__(cfg, **kwargs)

    def generate(self, total: int, rng: np.random.Generator) -> Examples:
        """Images drawn in chunks (label 1, 0, 1, ... within each), repeats dropped."""
        p, levels = self.config.curve_params(), self.config.levels
        connected = np.arange(min(CHUNK, total + total % 2)) % 2 == 0
        seen: set[bytes] = set()
        rows: list[np.ndarray] = []
        labels: list[int] = []
        while len(rows) < total:
            chunk = quantise(draw_pathfinder(rng, p, connected), levels).reshape(len(connected), -1)
            for row, label in zip(symbols_array(chunk), connected, strict=True):
                key = row.tobytes()
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
                    labels.append(int(label))
        pixels = p.size * p.size
        return Examples(
            np.concatenate(rows[:total]),
            np.arange(total + 1, dtype=np.int64) * pixels,
            np.array(labels[:total], dtype=np.int64),
        )

    def image(self, split: str, index: int) -> np.ndarray:
        """Example ``index`` of ``split`` as a (size, size) array of grey levels."""
        size = self.config.image_size
        return self.splits[split].sequence(index).astype(np.int64).reshape(size, size)

    def extra_info(self) -> dict[str, Any]:
        symbols = self.pool.symbols
        return {
            "curve_params": vars(self.config.curve_params()),
            "levels": self.config.levels,
            "ink_fraction": float(np.mean(symbols > 0)),
            "marker_fraction": float(np.mean(symbols == self.config.levels - 1)),
        }
