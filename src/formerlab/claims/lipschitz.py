"""``lipschitz``: spectral caps on every matrix hold throughout training; at the same cap, Muon
beats AdamW.

Paper: Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, 2025, "Training Transformers with
Enforced Lipschitz Constants", arXiv:2507.13338. Claim: weight constraints can be kept throughout
training, so the network's Lipschitz bound holds at every step; switching AdamW -> Muon improves
spectral normalization (same performance at a lower Lipschitz bound, or better performance at the
same one); such networks train without LayerNorm.

The check (the MLP proxy of claims.md §14 (a)), per seed: a norm-free residual MLP on scikit-learn's
8×8 digits, ``in (64 -> 64)``, :data:`DEPTH` blocks ``x + fc2(gelu(fc1 x))`` (64 -> 128 -> 64), head
(64 -> 10), every matrix a ``lipschitz`` linear layer with cap c = :data:`CAP` and ``normalize``
(spectral normalization after every optimizer step); its certified bound is therefore
``c^2 (1 + 1.129 c^2)^DEPTH`` (:mod:`formerlab.lipschitz_bound`). Two arms, same data order, init
and cosine schedule, no weight decay (the cap is the only constraint): Muon (all matrices; AdamW
3e-3 for the biases) and AdamW. Each arm is trained at every rate of its grid (:data:`LR_GRID`) and
scored on the test split at the rate with the best validation accuracy, so neither optimizer is
judged at a rate that suits only the other. After every step σ_max of every matrix is measured
exactly; at the end the bound is computed from the measured norms and tested on :data:`PAIRS` input
pairs (random pairs of test images and small perturbations of them): every ratio must be below it.

Metric: Muon test accuracy minus AdamW test accuracy (each at its selected rate), in points, when
every run is certified (every matrix within ``c (1 + 1e-3)`` after every step, finite losses, no
sampled pair above the bound); :data:`VIOLATION` (-100) otherwise. Criterion, fixed before any
result was seen: the mean over seeds is at least :data:`MIN_GAIN` = 1 point (claims.md §14 pass
rule); being certified is part of it (a violation's -100 cannot pass).

Negative control: the two arms, one rate each (:data:`CONTROL_LR`), with the projection skipped (no
``after_optimizer_step``; the layers are still capped at initialisation). The weights then leave
the ball, so the enforced bound is violated and the value is -100.

Inconclusive: a certified claim run below the criterion whose AdamW arm is already at or above
:data:`CEILING` % accuracy (a 1-point gain is then impossible).

History (stated so the protocol change can be judged): the first version used one fixed rate per
arm (Muon 0.02, AdamW 3e-3) and passed with +67 points (quick, 3 seeds: AdamW 22-35 %, Muon
94-96 %); a probe then showed AdamW reaching 81 % at rate 1e-4 (seed 0), so the fixed-rate gap
mostly measured AdamW's rate. The learning-rate grids were added to make the comparison fairer
(harder to pass); the criterion was not changed.

Differences from the paper: digits and a 38K-parameter MLP instead of CIFAR-10 MLPs and
transformers on Shakespeare/FineWeb; σ_max by exact SVD instead of power iteration; torch's Muon
(not the paper's modula dualization); spectral normalization only (no soft cap, hammer or
weight-decay arms); the tiny transformer proxy (b) is not run, because bounded attention is not
implemented.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import ClaimError, DataError
from ..layers.linear import LipschitzConfig, LipschitzLinear
from ..lipschitz_bound import GELU_LIPSCHITZ, Residual, lipschitz_bound
from ..registry import CLAIM
from ..tasks.image_sequence import DIGITS_FILE, digits_folder, read_digits
from ..threads import torch_threads
from ..train import build_optimizer, build_schedule
from ..train.trainer import after_optimizer_step
from .base import VARIANTS, ClaimCheck, ClaimConfig, Inconclusive

#: criterion: Muon accuracy minus AdamW accuracy (points), mean over seeds, at least this
MIN_GAIN = 1.0
#: the spectral-norm cap of every matrix, and the slack allowed when it is checked
CAP, CAP_SLACK = 1.0, 1e-3
#: value of a seed whose constraint or bound was violated (or whose loss went non-finite)
VIOLATION = -100.0
#: a claim run below the criterion with AdamW at or above this accuracy (%) is inconclusive
CEILING = 99.0
#: input pairs on which the computed bound is tested
PAIRS = 10_000
#: model: width, hidden width, residual blocks
WIDTH, HIDDEN, DEPTH = 64, 128, 2
#: optimizer steps per run, batch size, validation and test images (the rest of the 1,797 train)
STEPS = {"quick": 400, "full": 1000}
BATCH, VAL_SIZE, TEST_SIZE = 64, 300, 300
#: learning-rate grids: each optimizer is scored (test split) at its best validation rate
LR_GRID = {"muon": (0.005, 0.01, 0.02, 0.05), "adamw": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)}
#: the single rate per optimizer of the control's runs
CONTROL_LR = {"muon": 0.02, "adamw": 3e-4}
#: AdamW's rate for the parameters Muon does not take (biases)
MUON_ADAMW_LR = 3e-3
SCHEDULE = {"kind": "cosine", "warmup_steps": 20}


def optimizer_config(name: str, lr: float) -> dict[str, Any]:
    """The optimizer of arm ``name`` ("muon" | "adamw") at peak rate ``lr``, no weight decay."""
    if name == "muon":
        adamw = {"kind": "adamw", "lr": MUON_ADAMW_LR, "weight_decay": 0.0}
        return {"kind": "muon", "lr": lr, "weight_decay": 0.0, "adamw": adamw}
    return {"kind": "adamw", "lr": lr, "weight_decay": 0.0}


def enforced_bound(cap: float = CAP, depth: int = DEPTH) -> float:
    """The Lipschitz bound the caps certify: ``c`` for the input layer and the head, and
    ``1 + c·1.129·c`` for each block."""
    return cap * cap * (1.0 + cap * GELU_LIPSCHITZ * cap) ** depth


@functools.cache
def digits_split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pixels / 16 and labels; a fixed split (the same for every seed): VAL_SIZE validation and
    TEST_SIZE test images, the rest for training."""
    folder = digits_folder()
    if folder is None or not (folder / DIGITS_FILE).is_file():
        raise DataError(
            f"claim 'lipschitz': needs scikit-learn's {DIGITS_FILE}; pip install scikit-learn"
        )
    images, labels = read_digits(folder / DIGITS_FILE)
    order = np.random.default_rng(2507_13338).permutation(len(labels))
    x = torch.from_numpy(images.reshape(len(labels), -1).astype(np.float32) / 16.0)
    y = torch.from_numpy(labels)
    cut = {"val": order[:VAL_SIZE], "test": order[VAL_SIZE : VAL_SIZE + TEST_SIZE]}
    cut["train"] = order[VAL_SIZE + TEST_SIZE :]
    return {name: (x[idx], y[idx]) for name, idx in cut.items()}


def residual_mlp(seed: int) -> nn.Sequential:
    """The norm-free residual MLP, every matrix capped at CAP (seeded init)."""
    torch.manual_seed(seed)
    cfg = LipschitzConfig(max_norm=CAP, method="normalize")

    def linear(inp: int, out: int) -> LipschitzLinear:
        return LipschitzLinear(cfg, in_features=inp, out_features=out, bias=True)

    blocks = [
        Residual(nn.Sequential(linear(WIDTH, HIDDEN), nn.GELU(), linear(HIDDEN, WIDTH)))
        for _ in range(DEPTH)
    ]
    return nn.Sequential(linear(64, WIDTH), *blocks, linear(WIDTH, 10))


def max_sigma_ratio(model: nn.Module) -> float:
    """max over the capped matrices of σ_max(W) / cap (exact)."""
    return max(m.lipschitz_constant() / m.config.max_norm for m in _capped(model))


def _capped(model: nn.Module) -> list[LipschitzLinear]:
    return [m for m in model.modules() if isinstance(m, LipschitzLinear)]


def max_pair_ratio(model: nn.Module, x: torch.Tensor, seed: int, pairs: int) -> float:
    """max ||f(a) - f(b)|| / ||a - b|| over ``pairs`` pairs: half random pairs of rows of ``x``,
    half rows and small perturbations of them (float64, eval mode)."""
    g = torch.Generator().manual_seed(seed)
    f = _float64_copy(model)
    x = x.double()
    half = pairs // 2
    i = torch.randint(0, len(x), (half,), generator=g)
    j = (i + 1 + torch.randint(0, len(x) - 1, (half,), generator=g)) % len(x)  # j != i
    k = torch.randint(0, len(x), (pairs - half,), generator=g)
    noise = 0.01 * torch.randn(pairs - half, x.shape[1], generator=g, dtype=torch.float64)
    a, b = torch.cat([x[i], x[k]]), torch.cat([x[j], x[k] + noise])
    with torch.no_grad():
        ratios = (f(a) - f(b)).norm(dim=-1) / (a - b).norm(dim=-1)
    return float(ratios.max())


def _float64_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in points."""
    model.eval()
    with torch.no_grad():
        hits = (model(x).argmax(-1) == y).float().mean()
    model.train()
    return 100.0 * float(hits)


def train_arm(optimizer: dict[str, Any], steps: int, seed: int, *, project: bool) -> dict[str, Any]:
    """Train one run; its validation and test accuracy, the largest σ/cap seen after any step,
    finiteness, the bound computed from the final weights and the largest sampled pair ratio (test
    images)."""
    data = digits_split()
    (xt, yt), (xv, yv), (xs, ys) = data["train"], data["val"], data["test"]
    model = residual_mlp(seed)
    opt = build_optimizer(optimizer, model)
    warmup = min(SCHEDULE["warmup_steps"], steps)  # (tests run a few steps)
    schedule = build_schedule({**SCHEDULE, "warmup_steps": warmup}, steps)
    peaks = [group["lr"] for group in opt.param_groups]
    g = torch.Generator().manual_seed(seed)
    worst, finite, loss = max_sigma_ratio(model), True, math.nan
    for step in range(steps):
        for group, peak in zip(opt.param_groups, peaks, strict=True):
            group["lr"] = peak * schedule.factor(step)
        idx = torch.randint(0, len(xt), (BATCH,), generator=g)
        loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        if project:
            after_optimizer_step(model)
        opt.zero_grad(set_to_none=True)
        finite = finite and math.isfinite(float(loss.detach()))
        worst = max(worst, max_sigma_ratio(model))
    bound = lipschitz_bound(model)
    return {
        "val_accuracy": accuracy(model, xv, yv),
        "test_accuracy": accuracy(model, xs, ys),
        "max_sigma_over_cap": worst,
        "finite": finite,
        "final_loss": float(loss.detach()),
        "bound": bound,
        "max_pair_ratio": max_pair_ratio(model, xs, seed, PAIRS),
    }


def certified(arm: dict[str, Any]) -> bool:
    """Every matrix stayed within the cap, the loss stayed finite, no pair exceeded the bound."""
    return bool(
        arm["finite"]
        and arm["max_sigma_over_cap"] <= 1.0 + CAP_SLACK
        and arm["max_pair_ratio"] <= arm["bound"]
    )


@dataclass(kw_only=True)
class LipschitzClaimConfig(ClaimConfig):
    """The ``lipschitz`` claim check (capped residual MLP on digits, Muon vs AdamW)."""

    kind: ClassVar[str] = "lipschitz"


@CLAIM.register(LipschitzClaimConfig)
class LipschitzClaim(ClaimCheck):
    """The cap holds at every step and Muon beats AdamW at the same bound; skipping the
    projection must violate the bound."""

    paper = "Training Transformers with Enforced Lipschitz Constants"
    arxiv = "2507.13338"
    year = 2025
    claim = (
        "Weight norms can be kept capped throughout training, certifying the network's Lipschitz "
        "bound without LayerNorm, and at the same bound Muon reaches a higher accuracy than AdamW."
    )
    metric = (
        "Muon minus AdamW test accuracy (points; each at its best-validation learning rate of a "
        f"grid), norm-free residual MLP on digits, every matrix spectrally normalized to sigma_max "
        f"<= {CAP:g}; {VIOLATION:g} if any run violated the cap, went non-finite, or had a sampled "
        "pair above the computed bound"
    )
    paper_value = (
        "Newhouse et al. 2025: Muon improves spectral normalization and weight decay (equal "
        "performance at a lower Lipschitz bound); 2-Lipschitz transformer 60 % on Shakespeare; "
        "trains without LayerNorm, QK-norm or logit soft-capping"
    )
    criterion = (
        f"mean over seeds >= {MIN_GAIN:g} point, with every run certified after every step "
        f"(sigma_max <= cap*(1+{CAP_SLACK:g}), finite loss, all {PAIRS} sampled pairs within the "
        "bound); control (projection skipped) must fail it"
    )
    seeds = {"quick": (0,), "full": (0, 1, 2)}
    missing = (
        "the transformer proxy (needs the paper's bounded attention), the spectral soft cap / "
        "hammer / weight-decay arms, and the Lipschitz-vs-accuracy trade-off curve"
    )

    def passes(self, value: float) -> bool:
        return bool(value >= MIN_GAIN)

    def measure(self, variant: str, budget: str, seed: int) -> float:
        if variant not in VARIANTS or budget not in STEPS:
            raise ClaimError(
                f"claim 'lipschitz': measure({variant!r}, {budget!r}); allowed variants: "
                f"{', '.join(VARIANTS)}; budgets: {', '.join(STEPS)}"
            )
        steps, project = STEPS[budget], variant == "claim"
        grids = LR_GRID if project else {name: (lr,) for name, lr in CONTROL_LR.items()}
        with torch_threads(
            1
        ):  # tiny matrices: one thread is fastest and immune to oversubscription
            runs = {
                name: {lr: train_arm(optimizer_config(name, lr), steps, seed, project=project)
                       for lr in grid}
                for name, grid in grids.items()
            }  # fmt: skip
        ok = all(certified(run) for by_lr in runs.values() for run in by_lr.values())
        best = {
            name: max(by_lr, key=lambda lr: by_lr[lr]["val_accuracy"])
            for name, by_lr in runs.items()
        }
        test = {name: runs[name][lr]["test_accuracy"] for name, lr in best.items()}
        gain = test["muon"] - test["adamw"]
        self.note(
            **{f"{name}_lr{lr:g}_{key}": value for name, by_lr in runs.items()
               for lr, run in by_lr.items() for key, value in run.items()},
            **{f"{name}_best_lr": lr for name, lr in best.items()},
            **{f"{name}_test_accuracy": acc for name, acc in test.items()},
            certified=ok,
            gain_points=gain,
            enforced_bound=enforced_bound(),
            cap=CAP,
            steps=steps,
        )  # fmt: skip
        value = gain if ok else VIOLATION
        if project and ok and not self.passes(value) and test["adamw"] >= CEILING:
            raise Inconclusive(
                f"gain {gain:.2f} < {MIN_GAIN:g} point but AdamW already scores "
                f"{test['adamw']:.2f} % (ceiling {CEILING:g} %)",
                value,
            )
        return value
