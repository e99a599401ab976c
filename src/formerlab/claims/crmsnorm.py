"""``crmsnorm``: a Pre-LN Transformer converted to Pre-RMSNorm computes the same function, faster.

Paper: Zixuan Jiang, Jiaqi Gu, Hanqing Zhu, David Z. Pan, "Pre-RMSNorm and Pre-CRMSNorm
Transformers: Equivalent and Efficient Pre-LN Transformers", NeurIPS 2023, arXiv:2305.14858. Claim:
Pre-LN, Pre-RMSNorm and Pre-CRMSNorm Transformers are arithmetically equivalent, and substituting the
latter two gives a 1 %-10 % reduction of training and inference time.

The check, per seed: build ``gpt-small-cpu`` (4 blocks of width 256) with random LayerNorm gains and
biases (so that folding them is not trivial), convert it with ``pre_ln_to_rmsnorm`` and
``pre_ln_to_crmsnorm`` and measure, in float64 on a random batch, max |Δlogits| against the original
(the precondition: at most :data:`IDENTITY_TOL`). Then time, side by side in one process and
interleaved (:func:`formerlab.bench.speed.measure`: median of warm calls), the float32 Pre-LN model,
a second copy of it (an A/A pair that shows the timing noise), and the two converted models, on
training steps (forward + backward + AdamW) and inference forwards of 16 × 256 tokens.

Metric: min(training, inference) speed ratio t(Pre-LN) / t(Pre-RMSNorm), or 0 when the identity
precondition fails. Criterion, fixed before any result was seen: >= :data:`MIN_RATIO` (= 1.0, the
converted model is not slower) with the identity holding. Pre-CRMSNorm ratios are reported beside
it (in the result's ``details``), not gated.

Negative control: the same conversion skipping the recentring of block 0's attention output
projection; the identity then fails, so the value is 0.

Inconclusive: the identity holds but the ratio is below 1 by no more than the A/A pair's distance
from 1 (the difference is within this machine's timing noise).

Differences from the paper: CPU instead of GPU, a 3.2M-parameter model; the converted models are
untied (see :mod:`formerlab.transforms.norm_conversion`) and keep LayerNorm's final gain and bias in
an RMSNorm; training equivalence (same trajectories) is not checked.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..bench.speed import SpeedProtocol, Subject, measure
from ..registry import CLAIM
from ..transforms.norm_conversion import convert_pre_ln
from .base import ClaimCheck, ClaimConfig, Inconclusive

log = logging.getLogger(__name__)

#: precondition: max |Δlogits| (float64) of each conversion
IDENTITY_TOL = 1e-9
#: criterion: min(train, inference) speed ratio Pre-LN time / Pre-RMSNorm time at least this
MIN_RATIO = 1.0
#: the output projection whose recentring the negative control skips
CONTROL_SKIP = "transformer.blocks.0.attn.out_proj"
#: timed calls per phase (each figure is a median); warm-up calls before them
REPEATS = {"quick": 10, "full": 30}
WARMUP = 3
#: timed batch: sequences x tokens
BATCH, SEQ_LEN = 16, 256


@dataclass(kw_only=True)
class CRMSNormClaimConfig(ClaimConfig):
    """The ``crmsnorm`` claim check (exact conversion, speed ratio)."""

    kind: ClassVar[str] = "crmsnorm"


def pre_ln_model(seed: int) -> torch.nn.Module:
    """``gpt-small-cpu`` with seeded weights and random LayerNorm gains (1 ± 0.2) and biases."""
    import formerlab

    torch.manual_seed(seed)
    model = formerlab.build_model("gpt-small-cpu").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return model


def identity_gap(model: torch.nn.Module, converted: torch.nn.Module, seed: int) -> float:
    """max |Δlogits| between two float64 models on a random (2, 64) batch."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=generator)
    with torch.no_grad():
        return float((model(ids) - converted(ids)).abs().max())


def speed_ratios(models: dict[str, torch.nn.Module], budget: str) -> dict[str, dict[str, float]]:
    """Per model: {train, fwd} ratio t(first model) / t(model), timed side by side."""
    proto = SpeedProtocol(
        batch_size=BATCH,
        seq_len=SEQ_LEN,
        threads=torch.get_num_threads(),
        warmup=WARMUP,
        train_repeats=REPEATS[budget],
        fwd_warmup=WARMUP,
        fwd_repeats=REPEATS[budget],
    )
    subjects = [Subject(n, m, m, None, m.config.vocab_size) for n, m in models.items()]
    figures = measure(subjects, proto)
    base = figures[0]
    return {
        name: {
            "train": fig["train_tokens_per_s"] / base["train_tokens_per_s"],
            "fwd": fig["fwd_tokens_per_s"] / base["fwd_tokens_per_s"],
        }
        for name, fig in zip(models, figures, strict=True)
    }


@CLAIM.register(CRMSNormClaimConfig)
class CRMSNormClaim(ClaimCheck):
    """Pre-LN → Pre-RMSNorm is exact and not slower; skipping one recentring breaks the identity."""

    paper = (
        "Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient Pre-LN Transformers"
    )
    arxiv = "2305.14858"
    year = 2023
    claim = (
        "A Pre-LN Transformer converted to Pre-RMSNorm computes the same outputs and trains and "
        "infers 1-10 % faster."
    )
    metric = (
        "min(train, inference) speed ratio t(Pre-LN) / t(Pre-RMSNorm), gpt-small-cpu, CPU; "
        "0 if max |Δlogits| (float64) > 1e-9"
    )
    paper_value = (
        "Jiang et al. 2023: Pre-LN = Pre-RMSNorm = Pre-CRMSNorm arithmetically; 1 %-10 % lower "
        "training and inference time (ratio 1.01-1.11)"
    )
    criterion = (
        f"max |Δlogits| <= {IDENTITY_TOL:g} (float64) and speed ratio >= {MIN_RATIO:g}; control "
        "(one output projection not recentred) must fail it"
    )
    seeds = {"quick": (0,), "full": (0, 1, 2)}
    missing = (
        "Pre-CRMSNorm speed is reported, not gated; training equivalence and GPU timings are not "
        "checked"
    )

    def passes(self, value: float) -> bool:
        return bool(value >= MIN_RATIO)

    def measure(self, variant: str, budget: str, seed: int) -> float:
        self.check_measure_args(variant, budget, REPEATS)
        model = pre_ln_model(seed)
        exact = copy.deepcopy(model).double()  # the identity is checked in float64
        skip = CONTROL_SKIP if variant == "control" else None
        converted = {
            "pre_rmsnorm": convert_pre_ln(exact, compressed=False, skip_recentre=skip).eval(),
            "pre_crmsnorm": convert_pre_ln(exact, compressed=True, skip_recentre=skip).eval(),
        }
        gaps = {name: identity_gap(exact, m, seed) for name, m in converted.items()}
        self.note(identity=gaps)
        if max(gaps.values()) > IDENTITY_TOL:
            log.info("crmsnorm %s seed %d: identity fails %s", variant, seed, gaps)
            return 0.0
        timed = {"pre_ln": model, "pre_ln_copy": copy.deepcopy(model)}
        timed.update({name: m.float() for name, m in converted.items()})
        ratios = speed_ratios(timed, budget)
        self.note(ratios=ratios)
        log.info("crmsnorm %s seed %d: identity %s, ratios %s", variant, seed, gaps, ratios)
        value = min(ratios["pre_rmsnorm"].values())
        noise = max(abs(1.0 - r) for r in ratios["pre_ln_copy"].values())
        if variant == "claim" and value < MIN_RATIO and value >= 1.0 - noise:
            raise Inconclusive(
                f"speed ratio {value:.3f} < {MIN_RATIO:g} but within the A/A timing noise "
                f"(Pre-LN vs its copy: {ratios['pre_ln_copy']}); identity {gaps}; "
                f"Pre-CRMSNorm ratios {ratios['pre_crmsnorm']}",
                value,
            )
        return value
