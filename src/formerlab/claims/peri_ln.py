"""``peri_ln``: normalising each sublayer's output too (Peri-LN) keeps a deep code LM's hidden states
and gradients steadier than Pre-LN, and stays stable at a learning rate where Pre-LN degrades.

Paper: Jeonghoon Kim, Byeongchan Lee, Cheonbok Park, Yeontaek Oh, Beomjun Kim, Taehwan Yoo, Seongjin
Shin, Dongyoon Han, Jinwoo Shin, Kang Min Yoo, "Peri-LN: Revisiting Normalization Layer in the
Transformer Architecture", ICML 2025, arXiv:2502.02732. Peri-LN (x + LN_out(F(LN_in(x))), plus a
final LN) gives more balanced variance growth, steadier gradients and convergence stability than
Pre-LN, whose hidden states grow large and whose runs spike or diverge (experiments up to 3.2B
parameters).

The check trains, per seed and per learning rate in :data:`LRS` (the lowest and the highest), the
same deep, narrow decoder (:data:`DEPTH` blocks of width 64, LayerNorm) on ``code_lm`` twice: with
``norm_placement: pre`` and ``peri``; every arm sees the same batches and starts from the same seed.
It records each step's gradient norm (before clipping), the final validation loss, and the per-layer
RMS of the residual stream (embedding output, then every block output) on a fixed validation batch.

Metric: how many of these four conditions hold (0..4); 0 when the exact precondition fails:

1. growth: G(Pre) / G(Peri) >= :data:`MIN_GROWTH_RATIO` at the highest lr, where
   G = max over block outputs of the hidden RMS / the first block output's RMS;
2. stability: Peri's validation loss <= Pre's at the highest lr (a diverged, non-finite Pre-LN run
   counts as worse);
3. gradient spikes: Peri's largest spike (grad norm / median of the previous :data:`SPIKE_WINDOW`
   steps) is smaller than Pre's at the highest lr;
4. no cost at a safe lr: Peri's validation loss <= Pre's + :data:`LOW_LR_TOLERANCE` at the lowest lr.

Precondition (exact): in a fresh Peri-LN model (γ_out = 1, eps 1e-12, float64) every residual
increment has per-token RMS 1 within :data:`INCREMENT_ATOL`.

Criterion, fixed before any result was seen: the mean over seeds is 4 (every condition on every
seed). Negative control: Pre-LN against Pre-LN (identical arms), which must fail it; its runs are the
Pre-LN runs of the same seed (the same computation, so they are not repeated).

Inconclusive: the claim falls short while Pre-LN did not degrade at the highest lr (its validation
loss there is not above its loss at the lowest lr): this scale did not reach the regime the paper
describes. The per-layer RMS curves and the grad-norm series of every arm are recorded in the
result's ``details`` (and logged to ``formerlab.claims.peri_ln``).

Differences from the paper: an 8-block (quick) or 12-block (full), 64-wide byte-level model for a
few hundred steps on one CPU instead of 400M-3.2B models on 30B tokens; LayerNorm in both arms; no
benchmark accuracy or FP16-overflow part.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..registry import CLAIM
from ..run_config import RunConfig, load_config
from ..train import build_optimizer, build_schedule
from .base import ClaimCheck, ClaimConfig, Inconclusive
from .lra import load_task, seeded_model

log = logging.getLogger(__name__)

DEPTH = {"quick": 8, "full": 12}
STEPS = {"quick": 250, "full": 600}
#: learning rates: the verdict compares the arms at the lowest and at the highest
LRS = (1.0e-3, 1.0e-2)
MIN_GROWTH_RATIO = 2.0
LOW_LR_TOLERANCE = 0.05
SPIKE_WINDOW = 20
INCREMENT_ATOL = 1e-5
CONDITIONS = ("growth", "stability", "spikes", "low_lr_parity")
#: the task of every arm (the whole standard library, byte-level)
CODE_LM_TASK = {"kind": "code_lm", "seq_len": 128, "eval_batches": 8}


@dataclass
class Arm:
    """What one training run left behind."""

    val_loss: float
    grad_norms: list[float]
    layer_rms: list[float]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def growth(self) -> float:
        """max block-output RMS / first block-output RMS (inf when non-finite)."""
        blocks = self.layer_rms[1:]
        value = max(blocks) / blocks[0] if blocks and blocks[0] > 0 else math.inf
        return value if math.isfinite(value) else math.inf

    @property
    def max_spike(self) -> float:
        """Largest grad norm over the median of the previous SPIKE_WINDOW steps (inf if diverged)."""
        g = self.grad_norms
        if not all(math.isfinite(x) for x in g):
            return math.inf
        ratios = [
            g[t] / statistics.median(g[t - SPIKE_WINDOW : t]) for t in range(SPIKE_WINDOW, len(g))
        ]
        return max(ratios, default=1.0)


def run_config(placement: str, lr: float, budget: str, seed: int) -> RunConfig:
    """The deep, narrow code-LM run of one arm."""
    model = {
        "kind": "decoder_lm",
        "vocab_size": 256,
        "dim": 64,
        "depth": DEPTH[budget],
        "num_heads": 4,
        "max_seq_len": 128,
        "norm": {"kind": "layernorm"},
        "norm_placement": placement,
        "position": {"kind": "learned"},
    }
    train = {
        "steps": STEPS[budget],
        "batch_size": 16,
        "grad_clip": 1.0,
        "seed": seed,
        "optimizer": {"kind": "adamw", "lr": lr, "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_steps": STEPS[budget] // 10},
    }
    return load_config({"model": model, "task": dict(CODE_LM_TASK), "train": train})


def increment_rms_error(depth: int = 2) -> float:
    """max |per-token RMS - 1| of every residual increment of a fresh Peri-LN model (γ_out = 1)."""
    import formerlab

    cfg = run_config("peri", LRS[0], "quick", 0).model
    cfg = cfg.replace(depth=depth, norm={"kind": "layernorm", "eps": 1e-12})
    model = formerlab.build_model(cfg).double().eval()
    increments: list[torch.Tensor] = []
    for block in model.transformer.blocks:
        for norm in (block.attn_out_norm, block.ffn_out_norm):
            norm.register_forward_hook(lambda _m, _i, out: increments.append(out))
    with torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (2, 16)))
    rms = torch.cat([x.square().mean(-1).sqrt().flatten() for x in increments])
    return float((rms - 1).abs().max())


def layer_rms(model: torch.nn.Module, input_ids: torch.Tensor) -> list[float]:
    """Mean per-token RMS of the residual stream: embedding output, then each block's output."""
    seen: list[float] = []

    def record(_m: Any, inputs: Any, out: torch.Tensor) -> None:
        if not seen:
            seen.append(float(inputs[0].square().mean(-1).sqrt().mean()))
        seen.append(float(out.square().mean(-1).sqrt().mean()))

    hooks = [b.register_forward_hook(record) for b in model.transformer.blocks]
    with torch.no_grad():
        model(input_ids)
    for hook in hooks:
        hook.remove()
    return seen


def train_arm(run: RunConfig, task: Any) -> Arm:
    """Train one arm, recording grad norms; stop early (loss inf) once the loss is not finite."""
    model = seeded_model(run)
    cfg = run.train
    optimizer = build_optimizer(cfg.optimizer, model)
    schedule = build_schedule(cfg.schedule, cfg.steps)
    peaks = [group["lr"] for group in optimizer.param_groups]
    grad_norms: list[float] = []
    model.train()
    for step in range(cfg.steps):
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["lr"] = peak * schedule.factor(step)
        loss, _ = task.loss(model, task.batch("train", step, cfg.batch_size))
        loss.backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)))
        if not (math.isfinite(loss.item()) and math.isfinite(grad_norms[-1])):
            return Arm(math.inf, grad_norms, [math.inf] * (len(model.transformer.blocks) + 1))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    val = task.evaluate(model, cfg.batch_size)["val_loss"]
    rms = layer_rms(model, task.batch("val", 0, cfg.batch_size)["input_ids"])
    return Arm(val if math.isfinite(val) else math.inf, grad_norms, rms)


def conditions(base_low: Arm, base_high: Arm, test_low: Arm, test_high: Arm) -> dict[str, bool]:
    """The four written conditions for the tested arm (Peri-LN) against the base arm (Pre-LN)."""
    growth = base_high.growth / test_high.growth if math.isfinite(test_high.growth) else 0.0
    finite = math.isfinite(test_high.val_loss)
    return {
        "growth": growth >= MIN_GROWTH_RATIO,
        "stability": finite and test_high.val_loss <= base_high.val_loss,
        "spikes": test_high.max_spike < base_high.max_spike,
        "low_lr_parity": test_low.val_loss <= base_low.val_loss + LOW_LR_TOLERANCE,
    }


def describe_arm(arm: Arm) -> dict[str, Any]:
    """The recorded summary of a run: loss, RMS per layer, growth, spikes, grad norm per step."""
    return {
        "val_loss": round(arm.val_loss, 4),
        "layer_rms": [round(x, 4) for x in arm.layer_rms],
        "growth": round(arm.growth, 3),
        "max_spike": round(arm.max_spike, 3),
        "grad_norms": [round(x, 4) for x in arm.grad_norms],
    }


@dataclass(kw_only=True)
class PeriLNClaimConfig(ClaimConfig):
    """The ``peri_ln`` claim check (Peri-LN vs Pre-LN on a deep, narrow code LM)."""

    kind: ClassVar[str] = "peri_ln"


@CLAIM.register(PeriLNClaimConfig)
class PeriLNClaim(ClaimCheck):
    """Peri-LN: smaller hidden-state growth, fewer gradient spikes, stable at a high lr."""

    paper = "Peri-LN: Revisiting Normalization Layer in the Transformer Architecture"
    arxiv = "2502.02732"
    year = 2025
    claim = (
        "Peri-LN keeps hidden-state growth across depth and gradient-norm spikes below Pre-LN's and "
        "stays stable at a learning rate where Pre-LN degrades, at no cost at a safe learning rate."
    )
    metric = (
        "conditions met of 4 (growth ratio >= 2, stability, spikes, low-lr parity) on a deep "
        "64-wide code LM; 0 if increment RMS != 1"
    )
    paper_value = (
        "Kim et al. 2025: Peri-LN more balanced variance growth, steadier gradients and convergence "
        "than Pre-LN (400M-3.2B params); Pre-LN shows massive activations, spikes, divergence"
    )
    criterion = (
        f"all 4 conditions on every seed (mean = 4) at lr {LRS[0]:g} / {LRS[-1]:g}, and increment "
        f"RMS = 1 within {INCREMENT_ATOL:g}; control (Pre-LN vs Pre-LN) must fail it"
    )
    seeds = {"quick": (0,), "full": (0, 1)}
    missing = "benchmark accuracy, FP16 overflow and billion-parameter scale are not covered"

    def __init__(self, cfg: PeriLNClaimConfig) -> None:
        super().__init__(cfg)
        self._arms: dict[tuple[str, float, str, int], Arm] = {}
        self._tasks: dict[int, Any] = {}

    def passes(self, value: float) -> bool:
        return bool(value >= len(CONDITIONS))

    def arm(self, placement: str, lr: float, budget: str, seed: int) -> Arm:
        """One trained arm (cached: the control reuses the claim's Pre-LN runs)."""
        key = (placement, lr, budget, seed)
        if key not in self._arms:
            run = run_config(placement, lr, budget, seed)
            if seed not in self._tasks:  # the same data for every arm of a seed
                self._tasks[seed] = load_task(run, seed)
            self._arms[key] = train_arm(run, self._tasks[seed])
        return self._arms[key]

    def measure(self, variant: str, budget: str, seed: int) -> float:
        self.check_measure_args(variant, budget, STEPS)
        error = increment_rms_error()
        if error > INCREMENT_ATOL:
            self.note(increment_rms_error=error)
            return 0.0
        other = "peri" if variant == "claim" else "pre"
        low, high = LRS[0], LRS[-1]
        arms = {
            "pre_low": self.arm("pre", low, budget, seed),
            "pre_high": self.arm("pre", high, budget, seed),
            "test_low": self.arm(other, low, budget, seed),
            "test_high": self.arm(other, high, budget, seed),
        }
        met = conditions(*arms.values())
        numbers = {"test": other, "conditions": met, "increment_rms_error": error}
        numbers.update({k: describe_arm(a) for k, a in arms.items()})
        self.note(**numbers)
        log.info("peri_ln %s seed %d: %s", variant, seed, numbers)
        value = float(sum(met.values()))
        pre_degraded = not arms["pre_high"].val_loss <= arms["pre_low"].val_loss
        if variant == "claim" and not self.passes(value) and not pre_degraded:
            raise Inconclusive(
                f"{int(value)}/4 conditions ({met}) while Pre-LN did not degrade at lr {high:g} "
                f"(val loss {arms['pre_high'].val_loss:.3f} vs {arms['pre_low'].val_loss:.3f} at "
                f"{low:g}); growth Pre {arms['pre_high'].growth:.2f} vs Peri "
                f"{arms['test_high'].growth:.2f}",
                value,
            )
        return value
