"""``faster_lighter``: lower-complexity attention scales linearly in time and memory with the sequence
length, where full softmax attention scales quadratically in time.

Paper: Fournier, Marceau Caron, Aloise, "A Practical Survey on Faster and Lighter Transformers", ACM
Computing Surveys 2023, arXiv:2103.14636. The survey reviews general techniques (pruning,
distillation, quantization, parameter sharing, mixed precision) and lower-complexity attention
(sliding windows as in Longformer, low-rank projection as in Linformer, kernel feature maps as in
Performer and linear attention, ...); it runs no new experiment with a headline number. The part
checked here is its central premise for the attention family: O(n) cost against O(n^2).

The check runs :func:`formerlab.bench.attention.attention_benchmark` (one bidirectional attention
layer, batch 1, width 256, 4 heads, float32, forward + backward, median time and allocator peak
memory per length) over :data:`LENGTHS` for ``softmax`` (SDPA), ``local`` (window 64), ``linformer``
(k 64), ``performer`` (64 features) and ``linear`` (elu+1), and takes the benchmark's least-squares
log-log slopes over lengths >= :data:`FIT_MIN`. The metric is the largest slope, time or memory,
among the four linear-complexity kinds. It runs on :data:`THREADS` = 1 torch thread whatever the
runner's setting: a slope measures the algorithm's work, and on a machine shared with other jobs
two threads add a fixed hand-off latency of hundreds of milliseconds per call (measured here), which
flattens every slope towards 0 and would let a quadratic kind look linear.

Criterion, fixed before any result was seen (claims.md §29): that largest slope is at most
:data:`MAX_LINEAR_SLOPE` = 1.25 (mean over seeds). Inconclusive: softmax's time slope below
:data:`MIN_QUADRATIC_SLOPE` = 1.6 means the lengths are too short for the quadratic term to dominate
on this machine, so the measurement cannot separate the two families; a slope that cannot be fitted
(lengths skipped) is inconclusive too. Negative control: softmax itself measured in the
"efficient" slot (the softmax slopes of the same seed's claim run when it has been measured); a
quadratic kind presented as efficient must fail the same criterion.

Differences from the paper: only the attention-complexity premise is measured, on CPU; the survey's
memory argument is checked with the allocator's peak (softmax runs through SDPA, whose fused
kernel is linear in memory, so only its time is quadratic here); no accuracy trade-off (the ``lra``
check covers that family on ListOps), and none of the general techniques.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ClaimError
from ..registry import CLAIM
from .base import ClaimCheck, ClaimConfig, Inconclusive

log = logging.getLogger(__name__)

#: the criterion: the largest time or memory slope of the linear-complexity kinds, at most this
MAX_LINEAR_SLOPE = 1.25
#: below this softmax time slope the lengths are too short to decide (inconclusive)
MIN_QUADRATIC_SLOPE = 1.6
#: the shortest length in the slope fits
FIT_MIN = 1024
#: sequence lengths measured per budget (the fits use those >= FIT_MIN)
LENGTHS = {"quick": (512, 1024, 2048, 4096, 8192), "full": (512, 1024, 2048, 4096, 8192, 16384)}
#: timed forward+backward calls per length (median)
REPEATS = {"quick": 3, "full": 3}
#: torch threads of every measurement (see the module docstring)
THREADS = 1
#: the quadratic reference kind
REFERENCE = "softmax"
#: the linear-complexity kinds and their settings (claims.md §29)
EFFICIENT: dict[str, dict[str, Any]] = {
    "local": {"window": 64},
    "linformer": {"k": 64},
    "performer": {"num_features": 64},
    "linear": {},
}


def benchmark(kinds: list[str], budget: str, seed: int) -> dict[str, Any]:
    """The attention benchmark of ``kinds`` at the budget's lengths and repeats."""
    from ..bench.attention import attention_benchmark

    lengths = LENGTHS[budget]
    configs = {k: dict(EFFICIENT[k]) for k in kinds if EFFICIENT.get(k)}
    return attention_benchmark(
        kinds=kinds,
        lengths=list(lengths),
        configs=configs,
        repeats=REPEATS[budget],
        warmup=1,
        memory=True,
        fit_min=FIT_MIN,
        fit_max=max(lengths),
        threads=THREADS,
        seed=seed,
    )


def slopes(result: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """kind -> (time slope, memory slope) from a benchmark result."""
    return {
        kind: (result["time_exponents"][kind], result["memory_exponents"][kind])
        for kind in result["kinds"]
    }


def worst_slope(fits: dict[str, tuple[float | None, float | None]], efficient: list[str]) -> float:
    """The metric: the largest time or memory slope among ``efficient``; Inconclusive if any of
    those slopes could not be fitted."""
    missing = [k for k in efficient if any(s is None for s in fits[k])]
    if missing:
        raise Inconclusive(f"no slope fitted for {', '.join(missing)} (lengths skipped)")
    return max(max(fits[k]) for k in efficient)  # type: ignore[type-var]


def describe(fits: dict[str, tuple[float | None, float | None]]) -> str:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    return ", ".join(f"{k} time {fmt(t)} mem {fmt(m)}" for k, (t, m) in fits.items())


@dataclass(kw_only=True)
class FasterLighterClaimConfig(ClaimConfig):
    """The ``faster_lighter`` claim check (attention scaling slopes)."""

    kind: ClassVar[str] = "faster_lighter"


@CLAIM.register(FasterLighterClaimConfig)
class FasterLighterClaim(ClaimCheck):
    """Linear-complexity attention scales with slope <= 1.25; softmax in their place must not."""

    paper = "A Practical Survey on Faster and Lighter Transformers"
    arxiv = "2103.14636"
    year = 2023
    claim = (
        "Lower-complexity attention (sliding window, Linformer, Performer, linear) costs O(n) time "
        "and memory in the sequence length n, where full softmax attention costs O(n^2) time."
    )
    metric = (
        "largest log-log slope (forward+backward time or allocator peak memory vs n, n >= "
        f"{FIT_MIN}) among local(64), linformer(64), performer(64), linear; one attention layer, "
        "dim 256, 4 heads"
    )
    paper_value = (
        "Fournier et al. 2023 (survey): O(n) for the efficient attentions vs O(n^2) for softmax; "
        "no measured headline number"
    )
    criterion = (
        f"mean over seeds of the largest linear-kind slope <= {MAX_LINEAR_SLOPE:g}, with softmax's "
        f"time slope >= {MIN_QUADRATIC_SLOPE:g} (else inconclusive); control (softmax in the "
        "efficient slot) must fail it"
    )
    seeds = {"quick": (0,), "full": (0, 1, 2)}
    missing = (
        "the general techniques (pruning, distillation, quantization, parameter sharing, mixed "
        "precision), Reformer/Longformer-specific patterns, and the accuracy trade-off"
    )

    def __init__(self, cfg: FasterLighterClaimConfig) -> None:
        super().__init__(cfg)
        self._claim_fits: dict[tuple[str, int], dict[str, tuple[float | None, float | None]]] = {}
        self.last: dict[str, tuple[float | None, float | None]] = {}

    def passes(self, value: float) -> bool:
        return bool(value <= MAX_LINEAR_SLOPE)

    def measure(self, variant: str, budget: str, seed: int) -> float:
        self.check_measure_args(variant, budget, LENGTHS)
        if variant == "claim":
            efficient = list(EFFICIENT)
            fits = slopes(benchmark([REFERENCE, *efficient], budget, seed))
            self._claim_fits[(budget, seed)] = fits
        else:  # softmax in the efficient slot: its slopes from the claim run, else measured now
            efficient = [REFERENCE]
            measured = self._claim_fits.get((budget, seed))
            if measured is None:
                measured = slopes(benchmark([REFERENCE], budget, seed))
            fits = {REFERENCE: measured[REFERENCE]}
        self.last = fits
        numbers = f"slopes over n >= {FIT_MIN}: {describe(fits)}"
        log.info("faster_lighter %s seed %d: %s", variant, seed, numbers)
        try:
            value = worst_slope(fits, efficient)
        except Inconclusive as exc:
            raise Inconclusive(f"{exc.reason}; {numbers}") from None
        reference = fits[REFERENCE][0]
        if variant == "claim" and not (reference is not None and reference >= MIN_QUADRATIC_SLOPE):
            raise Inconclusive(
                f"softmax time slope {reference} < {MIN_QUADRATIC_SLOPE:g}: lengths too short to "
                f"separate O(n) from O(n^2) here; {numbers}",
                value,
            )
        if not math.isfinite(value):
            raise ClaimError(f"claim 'faster_lighter': slope is {value} ({numbers})")
        return value
