"""``primer``: Primer-EZ (squared ReLU + multi-DConv-head attention) reaches a lower code-LM validation
loss than the baseline Transformer after the same number of steps.

Paper: So, Mańke, Liu, Dai, Shazeer, Le, "Primer: Searching for Efficient Transformers for Language
Modeling", NeurIPS 2021, arXiv:2109.08668. Its two main changes, squared ReLU in the FFN and a causal
depthwise convolution of width 3 after each of the Q, K and V projections (MDHA), make up
"Primer-EZ"; at 500M parameters on C4 Primer matches the original T5 architecture with about 4x
less training compute, and at 1.9B parameters it needs 1/3 of the compute for the same one-shot
performance.

The check trains, per seed, the shared code-LM proxy of :mod:`formerlab.claims.lm_proxy` (a 4x128
byte-level decoder on the Python standard library) twice with the same data and steps: the baseline
(ReLU MLP, softmax attention: the original Transformer, as in the paper's T5 baseline) and
Primer-EZ (``ffn.activation: relu2``, ``attention: {kind: mdha}`` with its default width 3).
The metric is the baseline's validation loss minus Primer-EZ's, in nats per byte.

Criterion, fixed before any result was seen (claims.md §7): the mean over seeds is at least
:data:`MIN_GAIN` = 0.02 nats per byte. Negative control: the baseline against itself trained from
another initialisation (init seed + :data:`CONTROL_SEED_OFFSET`, same data and steps); the
difference is seed noise only and must fail the criterion, which shows the margin is above what a
different initialisation alone gives. Inconclusive: a claim seed whose gain lies strictly between
``-MIN_GAIN`` and ``MIN_GAIN`` (no effect shown either way at this scale, where the paper's effect
is at hundreds of millions of parameters) is reported with its numbers, never as a pass; a gain of
``-MIN_GAIN`` or less (Primer-EZ clearly worse) is returned and fails.

Differences from the paper: a 4-layer, 128-wide byte-level model trained for a few hundred steps
instead of T5-sized models on C4 with a SentencePiece vocabulary; the metric is the loss at equal
steps, not the compute needed to reach equal loss; the ablations (each change alone) and the
scaling with model size are not run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from ..registry import CLAIM
from .base import ClaimCheck, ClaimConfig, Inconclusive
from .lm_proxy import load_task, mean_loss, proxy_run, train_lm, val_batches

log = logging.getLogger(__name__)

#: the criterion: baseline val loss minus Primer-EZ val loss, nats per byte, at least this
MIN_GAIN = 0.02
#: optimizer steps per training run of each budget (the same for every arm)
STEPS = {"quick": 250, "full": 400}
#: the control's second baseline starts from init seed ``seed + CONTROL_SEED_OFFSET``
CONTROL_SEED_OFFSET = 1000

#: the two arms: (attention config, FFN activation)
BASELINE: tuple[dict[str, Any], str] = ({"kind": "softmax"}, "relu")
PRIMER_EZ: tuple[dict[str, Any], str] = ({"kind": "mdha", "kernel_size": 3}, "relu2")


@dataclass(kw_only=True)
class PrimerClaimConfig(ClaimConfig):
    """The ``primer`` claim check (Primer-EZ against the ReLU/softmax baseline on code LM)."""

    kind: ClassVar[str] = "primer"


@CLAIM.register(PrimerClaimConfig)
class PrimerClaim(ClaimCheck):
    """Primer-EZ beats the baseline at equal steps; the baseline against a re-seeded copy must not."""

    paper = "Primer: Searching for Efficient Transformers for Language Modeling"
    arxiv = "2109.08668"
    year = 2021
    claim = (
        "Primer-EZ (squared ReLU + depthwise-conv Q/K/V, MDHA) reaches a lower validation loss "
        "than the ReLU/softmax baseline Transformer after the same training steps."
    )
    metric = (
        "baseline val loss - Primer-EZ val loss (nats/byte), byte-level code_lm, 4x128 decoder, "
        "same data and steps"
    )
    paper_value = (
        "So et al. 2021: at 500M parameters on C4, Primer matches the original T5 architecture "
        "with ~4x less training compute; at 1.9B (GPT-3 XL config) 1/3 of the compute for the "
        "same one-shot performance"
    )
    criterion = (
        f"mean over seeds of (baseline - Primer-EZ val loss) >= {MIN_GAIN:g} nats/byte; control "
        "(baseline vs the baseline from another init seed) must fail it"
    )
    seeds = {"quick": (0,), "full": (0, 1, 2)}
    missing = (
        "the compute-to-equal-loss figure (4x / 3x), scaling with model size, one-shot "
        "evaluation, and the ablations of each change alone"
    )

    def __init__(self, cfg: PrimerClaimConfig) -> None:
        super().__init__(cfg)
        self._baseline: dict[tuple[str, int], float] = {}  # shared by claim and control
        self.last: dict[str, float] = {}  # the numbers behind the last measurement

    def passes(self, value: float) -> bool:
        return bool(value >= MIN_GAIN)

    def measure(self, variant: str, budget: str, seed: int) -> float:
        self.check_measure_args(variant, budget, STEPS)
        steps = STEPS[budget]
        baseline_run = arm_run(BASELINE, steps, seed)
        task = load_task(baseline_run, seed)
        if (budget, seed) not in self._baseline:
            self._baseline[(budget, seed)] = arm_loss(baseline_run, task)
        baseline = self._baseline[(budget, seed)]
        if variant == "claim":
            other = arm_loss(arm_run(PRIMER_EZ, steps, seed), task)
        else:
            other = arm_loss(arm_run(BASELINE, steps, seed + CONTROL_SEED_OFFSET), task)
        gain = baseline - other
        name = "Primer-EZ" if variant == "claim" else "re-seeded baseline"
        self.last = {"baseline": baseline, "other": other, "gain": gain}
        numbers = (
            f"baseline {baseline:.4f}, {name} {other:.4f} nats/byte after {steps} steps, "
            f"gain {gain:+.4f}"
        )
        log.info("primer %s seed %d: %s", variant, seed, numbers)
        if variant == "claim" and -MIN_GAIN < gain < MIN_GAIN:
            raise Inconclusive(
                f"|gain| below {MIN_GAIN:g} nats/byte at this scale: {numbers}", gain
            )
        return gain


def arm_run(arm: tuple[dict[str, Any], str], steps: int, seed: int):
    """The proxy run of one arm (attention, activation) with ``steps`` steps and init ``seed``."""
    attention, activation = arm
    return proxy_run(steps=steps, seed=seed, attention=attention, activation=activation)


def arm_loss(run, task) -> float:
    """Train the arm's model and return its validation loss (nats per byte)."""
    model = train_lm(run, task)
    return mean_loss(task, model, val_batches(task, run.train.batch_size))
