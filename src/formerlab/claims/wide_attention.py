"""``wide_attention``: one wide attention layer matches a deep stack at the same total number of heads,
with fewer parameters and faster CPU inference.

Paper: Brown, Zhao, Shumailov, Mullins, "Wide Attention Is The Way Forward For Transformers?",
2022, arXiv:2210.00640. Over 4 text tasks and 10 attention types, single-layer wide models were 0.3 %
more accurate on average than deep ones at the same total number of heads, 1.4x smaller on average,
and 3.1x faster on CPU (1.9x on GPU); on byte-level IMDb a 1-layer model was 3.1x faster on CPU than an
equally accurate deeper one and half its size.

The check trains classifiers on the two tasks claims.md §8 pre-registered (:data:`TASKS`):

- ``topics``: byte-level fortunes topic classification (24 topics, balanced, texts cut to 127 bytes;
  ``text_classification`` with ``dataset: topic``), the byte-level text task;
- ``listops``: mini-ListOps (the ``listops-tiny`` grammar of :mod:`formerlab.claims.lra`: depth <= 4,
  <= 5 arguments, 10 classes), with expressions cut to fewer than 64 tokens so that the quick budget
  fits (:data:`LISTOPS_CONFIG`).

On each task it trains the ``deep-4x4`` preset (4 layers x 4 heads) and the ``wide-1x16`` preset
(1 layer x 16 heads), each with the task's vocabulary, sequence length and classifier head. Both use
heads of width 16 and a model width of 64; the wide layer's attention is 256 wide, and it has one FFN.
Every arm of a task is trained the same number of steps. The three parts of the claim become three
margins per task, each >= 0 exactly when its condition holds on that task:

- accuracy: wide - deep + :data:`MAX_ACC_DROP` (points of validation accuracy);
- latency: 100 x (:data:`MAX_LATENCY_RATIO` - wide / deep latency). Latency is the median of
  :data:`LATENCY_RUNS` interleaved forward passes on a batch of :data:`LATENCY_BATCH` validation
  examples of the task, eval mode, after warm-up;
- parameters: 100 x (1 - wide / deep parameter count), counted exactly.

Each margin is the smaller of its two tasks' values (:func:`combine`): accuracy must hold on both
tasks, and latency is measured on both tasks (their sequences are 128 and 64 tokens) and the worse one
counts, as does the worse parameter ratio. The metric is the smallest of the three combined margins;
the mean over seeds must be >= 0. The criterion and the thresholds are those of claims.md §8, fixed
before any result was seen; the rule for two tasks was written down before the first run with both.

Inconclusive: on a task where the deep model is less than :data:`MIN_LEARNED` points above that task's
majority class (validation split), the deep model learned too little for "within 1 point of deep" to
mean anything; the check then reports the measured value as inconclusive, never as a pass.

Negative control: a 1-layer model that is not widened, with 4 heads of width 16 (the deep model's
per-layer heads, so 4 in total instead of 16), on both tasks. It is smaller and faster, so only its
accuracy can fail the criterion, and it must.

History: the first version trained on fortunes topics only. Its wide model met the criterion at
full budget (+1.51 over 3 seeds: wide 36.3 % against deep 30.7 %; quick -0.99, decided by the latency
margin), but so did the control (quick +4.6, full +6.1): on that task one layer beats four whatever
its heads, and the check was reported broken. mini-ListOps is not a task added after that result: it
is task (a) of the pre-registration, which the first version left out. The first quick run with both
tasks (seed 0) gave +1.10 for the claim and +1.10 for the control (ListOps: deep 26.6 %, wide
27.1 %, narrow 26.7 %, majority class 12.6 %), so the control still does not fail.

Two ways out were tried on the deep (reference) arm alone, seed 100, never with the wide or narrow
arms, and neither was adopted (``benchmarks/wide_deep_curve.py`` reproduces every figure below, at
``OMP_NUM_THREADS=1``). (1) Longer training: deep 4 x 4 on topics plateaus at 31-32 % from
1,750 to 2,750 steps while its training loss keeps falling (2.93 -> 1.54: overfitting 3,824 texts),
and on mini-ListOps at 27-29 % up to 3,000 steps, so a larger budget does not let depth pay off.
(2) A task where one layer needs many heads: :mod:`formerlab.tasks.keywords` (which keyword occurs
intact among near-misses; counting 5-position matches scores 82 %, an exact 9-symbol check 100 %).
The deep model stays at 68-72 % from 250 to 3,000 steps (6 strings in 64 tokens; learned or rotary
positions, lr 1e-3) and at 62-64 % with 14 strings in 128 tokens (lr 1e-3 or 3e-3), below what
the 5-position statistic gives: it does not learn the task, so the task cannot judge width.

Differences from the paper: fortunes topics instead of IMDb and mini-ListOps of fewer than 64 tokens
instead of LRA's 500..2000; no other tasks; one attention type (softmax) instead of 10; 64-wide
models trained 400 / 200 steps (quick, topics / ListOps) or 1,200 / 600 (full). Latency is
measured on the machine that runs the check, which is shared: the interleaved median keeps the ratio
fair, but the absolute times drift.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..bench.speed import count_params
from ..errors import ClaimError
from ..models.presets import preset_dict
from ..registry import CLAIM, TASK
from ..run_config import RunConfig, load_config
from .base import ClaimCheck, ClaimConfig, Inconclusive
from .lra import LISTOPS_TINY, train_new_model

#: the wide model may be this many points less accurate than the deep one
MAX_ACC_DROP = 1.0
#: the wide model's CPU inference latency must be at most this fraction of the deep model's
MAX_LATENCY_RATIO = 0.6
#: below this many points over its task's majority class the deep model has not learned the task
MIN_LEARNED = 5.0
#: forward passes timed per model (interleaved), and the batch they run on
LATENCY_RUNS = 20
LATENCY_BATCH = 32
#: optimizer steps per training run of each budget (same for every arm): topics, ListOps
STEPS = {"quick": 400, "full": 1200}
LISTOPS_STEPS = {"quick": 200, "full": 600}
NUM_TOPICS = 24
#: the tasks pre-registered in claims.md §8, in the order they are trained
TASKS = ("topics", "listops")
#: the margins of :func:`margins`
PARTS = ("accuracy", "latency", "parameters")

#: each arm: the preset it starts from and what it changes
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "deep": ("deep-4x4", {}),
    "wide": ("wide-1x16", {}),
    "narrow": ("wide-1x16", {"num_heads": 4}),  # the control: 1 layer, not widened
}

TASK_CONFIG: dict[str, Any] = {
    "kind": "text_classification",
    "dataset": "topic",
    "seq_len": 128,
    "train_size": 3824,
    "val_size": 500,
    "test_size": 500,
    "eval_batches": 16,
}

#: listops-tiny's grammar with expressions of 21..63 tokens (CLS + 63 = 64 positions); accuracy on
#: the first 1,000 validation expressions
LISTOPS_CONFIG: dict[str, Any] = {
    **LISTOPS_TINY["task"],
    "seq_len": 64,
    "max_length": 64,
    "eval_batches": 32,
}

TRAIN_CONFIG: dict[str, Any] = {
    "batch_size": 32,
    "optimizer": {"kind": "adamw", "lr": 1.0e-3, "weight_decay": 0.05},
    "schedule": {"kind": "cosine", "warmup_steps": 50},
}


def task_setup(task: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """Task ``task``'s config, the model fields it sets (vocabulary, length, classes) and its
    steps per budget."""
    if task == "topics":
        return TASK_CONFIG, {"num_classes": NUM_TOPICS}, STEPS
    if task == "listops":
        model = LISTOPS_TINY["model"]
        fields = {
            "vocab_size": model["vocab_size"],
            "max_seq_len": LISTOPS_CONFIG["seq_len"],
            "num_classes": model["head"]["num_classes"],
        }
        return LISTOPS_CONFIG, fields, LISTOPS_STEPS
    raise ClaimError(f"claim 'wide_attention': unknown task {task!r}; allowed: {', '.join(TASKS)}")


def arm_run(arm: str, steps: int, seed: int, task: str = "topics") -> RunConfig:
    """The run of ``arm`` ("deep", "wide" or "narrow") on ``task`` with ``steps`` steps and seed
    ``seed``."""
    task_cfg, fields, _ = task_setup(task)
    preset, changes = ARMS[arm]
    model = {**preset_dict(preset), **changes}
    model.update({k: v for k, v in fields.items() if k != "num_classes"})
    model["head"] = {**model["head"], "num_classes": fields["num_classes"]}
    train = {**TRAIN_CONFIG, "steps": steps, "seed": seed}
    return load_config({"model": model, "task": task_cfg, "train": train})


def margins(
    acc: tuple[float, float], latency: tuple[float, float], params: tuple[int, int]
) -> dict[str, float]:
    """The three margins of (arm, deep) accuracy (points), latency (s) and parameter count."""
    return {
        "accuracy": acc[0] - acc[1] + MAX_ACC_DROP,
        "latency": 100.0 * (MAX_LATENCY_RATIO - latency[0] / latency[1]),
        "parameters": 100.0 * (1.0 - params[0] / params[1]),
    }


def combine(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each margin's worst value over the tasks (every condition must hold on every task)."""
    if not per_task:
        raise ClaimError("claim 'wide_attention': no task margins to combine")
    return {part: min(found[part] for found in per_task.values()) for part in PARTS}


@torch.no_grad()
def paired_latency(
    a: torch.nn.Module, b: torch.nn.Module, batch: dict[str, torch.Tensor], runs: int
) -> tuple[float, float]:
    """Median forward time of ``a`` and ``b`` on ``batch``, timed alternately after a warm-up."""
    inputs = batch["input_ids"], batch.get("attention_mask")
    times: tuple[list[float], list[float]] = ([], [])
    for model in (a, b):
        model.eval()
        for _ in range(3):
            model(*inputs)
    for _ in range(runs):
        for model, out in zip((a, b), times, strict=True):
            start = time.perf_counter()
            model(*inputs)
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


@dataclass(kw_only=True)
class WideAttentionClaimConfig(ClaimConfig):
    """The ``wide_attention`` claim check (1 x 16 heads against 4 x 4 heads on fortunes topics and
    mini-ListOps)."""

    kind: ClassVar[str] = "wide_attention"


@CLAIM.register(WideAttentionClaimConfig)
class WideAttentionClaim(ClaimCheck):
    """One wide layer is as accurate as the deep stack on both tasks, smaller and faster; a 1-layer
    model that is not widened must lose accuracy."""

    paper = "Wide Attention Is The Way Forward For Transformers?"
    arxiv = "2210.00640"
    year = 2022
    claim = (
        "At a fixed total of 16 heads, one layer of 16 heads is within 1 point of the accuracy of "
        "4 layers of 4 heads on both tasks, with fewer parameters and <= 0.6x the CPU inference "
        "latency."
    )
    metric = (
        "min of three margins (>= 0 iff each condition holds on both tasks, fortunes topics and "
        "mini-ListOps): min over tasks of wide - deep accuracy + 1 (points); "
        "100 x (0.6 - worse wide/deep latency ratio); 100 x (1 - worse wide/deep parameter ratio)"
    )
    paper_value = (
        "Brown et al. 2022: wide single-layer models +0.3 % accuracy on average over deep ones, "
        "1.4x smaller, 3.1x faster on CPU (1.9x on GPU); byte-level IMDb: 3.1x faster on CPU"
    )
    criterion = (
        f"mean over seeds of min(wide - deep accuracy + {MAX_ACC_DROP:g} points on each task, "
        f"100 x ({MAX_LATENCY_RATIO:g} - latency ratio) on each task, 100 x (1 - parameter "
        "ratio) on each task) >= 0; tasks: fortunes topics and mini-ListOps; control (1 layer x 4 "
        f"heads, not widened) must fail it; inconclusive if the deep model is < {MIN_LEARNED:g} "
        "points above a task's majority class"
    )
    seeds = {"quick": (0,), "full": (0, 1, 2)}
    missing = (
        "the other 9 attention types, the other tasks (IMDb, LRA-length sequences), GPU latency "
        "(1.9x) and the interpretability of single-layer attention"
    )

    def passes(self, value: float) -> bool:
        return bool(value >= 0.0)

    def measure(self, variant: str, budget: str, seed: int) -> float:
        self.check_measure_args(variant, budget, STEPS)
        arm = "wide" if variant == "claim" else "narrow"
        tables = {task: self._compare(task, arm, budget, seed) for task in TASKS}
        found = combine({task: table["margins"] for task, table in tables.items()})
        self.note(arm=arm, margins=found, **tables)
        value = min(found.values())
        unlearned = [
            f"{task}: deep {t['accuracy']['deep']:.1f} % vs majority {t['majority_baseline']:.1f} %"
            for task, t in tables.items()
            if t["accuracy"]["deep"] - t["majority_baseline"] < MIN_LEARNED
        ]
        if unlearned:
            raise Inconclusive(
                f"the deep model is less than {MIN_LEARNED:g} points above the majority class "
                f"({'; '.join(unlearned)}), so the accuracy comparison decides nothing; "
                f"measured {value:.2f}",
                value,
            )
        return value

    def _compare(self, task: str, arm: str, budget: str, seed: int) -> dict[str, Any]:
        """``arm`` against the deep model on ``task``: its margins and the numbers behind them,
        with the accuracies of every arm trained so far on this task, budget and seed."""
        deep, deep_acc, majority = self._trained(task, "deep", budget, seed)
        model, acc, _ = self._trained(task, arm, budget, seed)
        batch = self._task(task, seed).batch("val", 0, LATENCY_BATCH)
        latency = paired_latency(model, deep, batch, LATENCY_RUNS)
        params = count_params(model), count_params(deep)
        trained = self.__dict__["_trained_arms"]
        return {
            "accuracy": {
                name: trained[task, name, budget, seed][1]
                for name in ARMS
                if (task, name, budget, seed) in trained
            },
            "majority_baseline": majority,
            "latency_ms": 1e3 * latency[0],
            "deep_latency_ms": 1e3 * latency[1],
            "latency_ratio": latency[0] / latency[1],
            "parameters": params[0],
            "deep_parameters": params[1],
            "margins": margins((acc, deep_acc), latency, params),
            "steps": task_setup(task)[2][budget],
        }

    def _task(self, task: str, seed: int) -> Any:
        cache = self.__dict__.setdefault("_tasks", {})
        if (task, seed) not in cache:
            run = arm_run("deep", task_setup(task)[2]["quick"], seed, task)
            cache[task, seed] = TASK.entry(run.task.kind, "task.kind").impl(run.task, seed=seed)
        return cache[task, seed]

    def _trained(
        self, task: str, arm: str, budget: str, seed: int
    ) -> tuple[torch.nn.Module, float, float]:
        """``arm`` trained on ``task``, its validation accuracy and the majority-class baseline of
        the same examples, in points (trained once per task, budget and seed: the deep model is
        shared by the claim and its control)."""
        cache = self.__dict__.setdefault("_trained_arms", {})
        key = (task, arm, budget, seed)
        if key not in cache:
            run = arm_run(arm, task_setup(task)[2][budget], seed, task)
            data = self._task(task, seed)
            data.check_model(run.model, "model")
            model = train_new_model(run, data)  # seeded by run.train.seed, i.e. ``seed``
            model.eval()
            metrics = data.evaluate(model, run.train.batch_size, "val")
            accuracy, majority = metrics["accuracy"], metrics["majority_baseline"]
            cache[key] = model, 100.0 * accuracy, 100.0 * majority
        return cache[key]
