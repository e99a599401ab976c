"""``quantizable``: clipped softmax and gated attention remove the activation outliers of a vanilla
Transformer and with them most of its loss under 8-bit weights and activations (W8A8).

Paper: Bondarenko, Nagel, Blankevoort, "Quantizable Transformers: Removing Outliers by Helping
Attention Heads Do Nothing", NeurIPS 2023, arXiv:2306.12929. Attention heads that learn to do
nothing push softmax inputs ever larger, which produces strong outliers in the FFN outputs and the
residual stream; the clipped softmax (``clipped_softmax``) and gated attention (``gated``) let a
head do nothing at finite values. Paper figures (BERT-base, approximate: recalled in claims.md, not
yet verified against the PDF): vanilla max inf norm ~735, average kurtosis ~3076, W8A8 perplexity
~1294 against clipped softmax ~21.5 / ~80 / ~4.52 at an equal floating-point perplexity (~4.49 vs
~4.39).

The check trains, per seed, the code-LM proxy of :mod:`formerlab.claims.lm_proxy` three times with
the same data and steps: vanilla softmax attention, clipped softmax (``gamma = -0.025, zeta = 1``,
the paper's ``clipped(-.025:1)``) and gated attention (gate initialised at 0.25). For each it
measures, on the fixed validation batches: the loss in float (nats/byte), the loss under
:func:`formerlab.quant.simulated_w8a8` (per-tensor asymmetric uniform 8-bit weights and activations,
ranges from 4 calibration batches) and the W8A8 gap between them, and with
:func:`formerlab.quant.outlier_stats` the average kurtosis and the largest inf norm of the FFN outputs
and block outputs (the residual stream).

Metric, one number: the outlier-removal margin ``min over t in {clipped, gated} of
min(K_v / (2 K_t), N_v / (1.5 N_t), G_v / max(G_t, GAP_FLOOR))``, with ``K`` the average kurtosis,
``N`` the max inf norm and ``G`` the W8A8 gap of the vanilla model (``v``) and the treatment
(``t``). It is at least 1 exactly when both treatments have at most half the vanilla kurtosis, at
most 2/3 of its inf norm and no larger W8A8 gap (claims.md §18). Criterion, fixed before any result
was seen: the mean over seeds is at least 1.

Inconclusive (never a pass), per claims.md's warning that outliers may not emerge at tiny scale:
the vanilla model has no outliers (average kurtosis below :data:`MIN_VANILLA_KURTOSIS`) or loses
less than :data:`MIN_VANILLA_GAP` nats/byte under W8A8 (nothing to remove); or a treatment's
float loss is worse than vanilla's by more than :data:`LOSS_TOLERANCE` nats/byte (not at equal
loss: a less trained model also has fewer outliers). Negative control: clipped softmax with
``gamma = 0, zeta = 1``, which is exactly softmax, as the only treatment; it trains the vanilla
network again, so its margin is at most about ``min(1/2, 1/1.5, 1)`` and must fail the criterion.

Differences from the paper: a causal byte-level 4x128 code LM trained for a few hundred steps
instead of BERT/OPT/ViT models trained to convergence; the clipped softmax uses a fixed gamma (not
``-alpha / T``); W8A8 uses min-max ranges and leaves the embedding, the tied output head, the norms
and the softmax in float (see :mod:`formerlab.quant`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ClaimError
from ..quant import block_outputs, ffn_outputs, outlier_stats, simulated_w8a8
from ..registry import CLAIM
from .base import ClaimCheck, ClaimConfig, Inconclusive
from .lm_proxy import calibration_batches, load_task, mean_loss, proxy_run, train_lm, val_batches

log = logging.getLogger(__name__)

#: the criterion: the outlier-removal margin (mean over seeds) at least this
MIN_MARGIN = 1.0
#: required reductions: vanilla kurtosis / treatment kurtosis, vanilla inf norm / treatment's
KURTOSIS_FACTOR = 2.0
INF_NORM_FACTOR = 1.5
#: a treatment's W8A8 gap below this (nats/byte) counts as this (no division by ~0)
GAP_FLOOR = 1e-3
#: inconclusive unless the vanilla model has outliers to remove ...
MIN_VANILLA_KURTOSIS = 20.0
#: ... and loses at least this much (nats/byte) under W8A8
MIN_VANILLA_GAP = 0.02
#: inconclusive if a treatment's float val loss exceeds vanilla's by more than this (nats/byte)
LOSS_TOLERANCE = 0.05
#: calibration batches for the activation ranges of W8A8
CALIBRATION_BATCHES = 4
#: optimizer steps per training run of each budget (the same for every arm)
STEPS = {"quick": 200, "full": 400}

VANILLA: dict[str, Any] = {"kind": "softmax"}
TREATMENTS: dict[str, dict[str, Any]] = {
    "clipped": {"kind": "clipped_softmax", "gamma": -0.025, "zeta": 1.0},
    "gated": {"kind": "gated", "gate_init": 0.25},
}
#: the control's treatment: clipped softmax that is exactly softmax
CONTROL: dict[str, dict[str, Any]] = {
    "clipped(0:1)": {"kind": "clipped_softmax", "gamma": 0.0, "zeta": 1.0}
}


def arm_figures(run: Any, task: Any) -> dict[str, float]:
    """Train one arm; its float loss, W8A8 loss and gap (nats/byte), avg kurtosis, max inf norm."""
    model = train_lm(run, task)
    batch_size = run.train.batch_size
    val = val_batches(task, batch_size)
    fp = mean_loss(task, model, val)
    with simulated_w8a8(model, calibration_batches(task, batch_size, CALIBRATION_BATCHES)):
        w8a8 = mean_loss(task, model, val)
    stats = outlier_stats(model, val, {**ffn_outputs(model), **block_outputs(model)})
    return {
        "loss": fp,
        "w8a8_loss": w8a8,
        "gap": w8a8 - fp,
        "kurtosis": stats["avg_kurtosis"],
        "inf_norm": stats["max_inf_norm"],
    }


def treatment_margin(vanilla: dict[str, float], treated: dict[str, float]) -> float:
    """min(K_v / (2 K_t), N_v / (1.5 N_t), G_v / max(G_t, GAP_FLOOR)) for one treatment."""
    return min(
        vanilla["kurtosis"] / (KURTOSIS_FACTOR * treated["kurtosis"]),
        vanilla["inf_norm"] / (INF_NORM_FACTOR * treated["inf_norm"]),
        vanilla["gap"] / max(treated["gap"], GAP_FLOOR),
    )


def outlier_margin(vanilla: dict[str, float], treatments: dict[str, dict[str, float]]) -> float:
    """The metric: the smallest :func:`treatment_margin` over ``treatments``."""
    if not treatments:
        raise ClaimError("quantizable: no treatment to compare with the vanilla model")
    return min(treatment_margin(vanilla, t) for t in treatments.values())


def inconclusive_reason(
    vanilla: dict[str, float], treatments: dict[str, dict[str, float]]
) -> str | None:
    """Why the comparison cannot decide the claim (module docstring), or None."""
    if not vanilla["kurtosis"] >= MIN_VANILLA_KURTOSIS:
        return (
            f"vanilla model has no outliers at this scale: avg kurtosis "
            f"{vanilla['kurtosis']:.2f} < {MIN_VANILLA_KURTOSIS:g}"
        )
    if not vanilla["gap"] >= MIN_VANILLA_GAP:
        return (
            f"vanilla model loses only {vanilla['gap']:+.4f} nats/byte under W8A8 "
            f"(< {MIN_VANILLA_GAP:g}): nothing to remove"
        )
    for name, t in treatments.items():
        if t["loss"] - vanilla["loss"] > LOSS_TOLERANCE:
            return (
                f"not at equal loss: {name} val loss {t['loss']:.4f} exceeds vanilla's "
                f"{vanilla['loss']:.4f} by more than {LOSS_TOLERANCE:g} nats/byte"
            )
    return None


def describe(figures: dict[str, dict[str, float]]) -> str:
    """One line of numbers per arm, for logs and inconclusive reasons."""
    return "; ".join(
        f"{name}: loss {f['loss']:.4f}, W8A8 {f['w8a8_loss']:.4f} (gap {f['gap']:+.4f}), "
        f"kurtosis {f['kurtosis']:.2f}, max|x| {f['inf_norm']:.2f}"
        for name, f in figures.items()
    )


@dataclass(kw_only=True)
class QuantizableClaimConfig(ClaimConfig):
    """The ``quantizable`` claim check (clipped softmax / gated attention against vanilla)."""

    kind: ClassVar[str] = "quantizable"


@CLAIM.register(QuantizableClaimConfig)
class QuantizableClaim(ClaimCheck):
    """Clipped and gated attention shrink outliers and the W8A8 gap; softmax-as-clipped must not."""

    paper = "Quantizable Transformers: Removing Outliers by Helping Attention Heads Do Nothing"
    arxiv = "2306.12929"
    year = 2023
    claim = (
        "At equal float loss, clipped softmax and gated attention give much smaller activation "
        "outliers (kurtosis, max |x|) than vanilla softmax attention and a smaller loss under "
        "8-bit weights and activations (W8A8)."
    )
    metric = (
        "outlier-removal margin min over {clipped, gated} of min(K_v/(2 K_t), N_v/(1.5 N_t), "
        "G_v/G_t) (K avg kurtosis, N max inf norm of FFN and block outputs, G W8A8 loss gap), "
        "byte-level code_lm 4x128 decoder"
    )
    paper_value = (
        "Bondarenko et al. 2023, BERT-base (approximate): vanilla max inf norm ~735, avg "
        "kurtosis ~3076, W8A8 ppl ~1294 (FP ~4.49); clipped softmax ~21.5, ~80, W8A8 ppl ~4.52 "
        "(FP ~4.39)"
    )
    criterion = (
        f"mean over seeds of the margin >= {MIN_MARGIN:g} (both treatments: kurtosis <= 1/2 and "
        "max|x| <= 2/3 of vanilla's, W8A8 gap <= vanilla's); inconclusive if vanilla avg "
        f"kurtosis < {MIN_VANILLA_KURTOSIS:g} or its W8A8 gap < {MIN_VANILLA_GAP:g} nats/byte, or a "
        f"treatment's float loss is > {LOSS_TOLERANCE:g} nats/byte worse; control (clipped "
        "softmax with gamma=0, zeta=1, i.e. softmax) must fail it"
    )
    seeds = {"quick": (0,), "full": (0, 1)}
    missing = (
        "BERT/OPT/ViT-size models trained to convergence (outliers may need them), "
        "MSE/percentile range estimation, the gamma = -alpha/T form"
    )

    def __init__(self, cfg: QuantizableClaimConfig) -> None:
        super().__init__(cfg)
        self._vanilla: dict[tuple[str, int], dict[str, float]] = {}  # shared by claim and control
        self.last: dict[str, dict[str, float]] = {}  # the figures behind the last measurement

    def passes(self, value: float) -> bool:
        return bool(value >= MIN_MARGIN)

    def measure(self, variant: str, budget: str, seed: int) -> float:
        self.check_measure_args(variant, budget, STEPS)
        steps = STEPS[budget]
        vanilla_run = proxy_run(steps=steps, seed=seed, attention=VANILLA)
        task = load_task(vanilla_run, seed)
        if (budget, seed) not in self._vanilla:
            self._vanilla[(budget, seed)] = arm_figures(vanilla_run, task)
        vanilla = self._vanilla[(budget, seed)]
        arms = TREATMENTS if variant == "claim" else CONTROL
        treated = {
            name: arm_figures(proxy_run(steps=steps, seed=seed, attention=att), task)
            for name, att in arms.items()
        }
        margin = outlier_margin(vanilla, treated)
        self.last = {"vanilla": vanilla, **treated}
        numbers = f"margin {margin:.3f} after {steps} steps; {describe(self.last)}"
        log.info("quantizable %s seed %d: %s", variant, seed, numbers)
        if not math.isfinite(margin):
            raise ClaimError(f"claim 'quantizable': margin is {margin} ({numbers})")
        reason = inconclusive_reason(vanilla, treated) if variant == "claim" else None
        if reason is not None:
            raise Inconclusive(f"{reason}; {numbers}", margin)
        return margin
