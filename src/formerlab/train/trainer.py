"""The training loop: one run directory, exact resume, non-finite-step skipping.

A run directory (DESIGN §5) holds ``config.yaml`` (the fully resolved run), ``metrics.jsonl``,
TensorBoard event files and ``checkpoints/step_N/``. Steps are counted from 1 in records and
checkpoint names: ``step_N`` holds the state after N optimizer steps.

Exact resume rests on three facts: batches are a pure function of ``(seed, split, index)`` with
micro-batch index ``step * grad_accum + i``; the schedule is a pure function of the step; and every
other piece of state (weights, optimizer, global RNG streams, counters, the partial metrics window) is
in the checkpoint. Evaluation runs with the RNG streams saved and restored, so it never shifts the
dropout masks of training. Records are written before the checkpoint of the same step, so resuming
from ``step_N`` keeps exactly the records with ``step <= N``.

``train.time_limit_s`` stops a run after the step during which that much wall-clock time of its loop
(evaluations and checkpoints included, summed over resumed sessions) has passed; the run then logs,
evaluates and checkpoints as at ``train.steps``. Where it stops depends on the machine's speed, so a
time-limited run is not bit-reproducible (each step it does take still is).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from ..errors import ConfigError, TrainingError
from ..fileio import atomic_write_text
from ..layers.aux import clear_aux, collect_aux, parameter_counts
from ..registry import TASK
from ..threads import torch_threads
from .checkpoint import (
    fault_from_env,
    latest_valid_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .optim import build_optimizer
from .progress import make_progress
from .schedule import build_schedule

if TYPE_CHECKING:
    from ..run_config import RunConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
#: record fields that depend on wall-clock time (everything else is reproducible bit for bit)
TIMING_FIELDS = ("tokens_per_s", "elapsed_s")
#: config fields that may change between a run and its ``--resume``
RESUMABLE_CHANGES = ("train.steps", "train.threads", "train.time_limit_s")
STATE_FORMAT = 1


# -- RNG streams -------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """torch, Python and NumPy global RNG states as tensors and plain Python values."""
    np_state = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without advancing the global RNG streams seen outside it."""
    saved = capture_rng()
    try:
        yield
    finally:
        restore_rng(saved)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


# -- metrics.jsonl -----------------------------------------------------------------------------


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe record: non-finite floats become null."""
    return {k: _finite_or_none(v) for k, v in record.items()}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def truncate_metrics(path: str | Path, step: int) -> list[dict[str, Any]]:
    """Atomically keep only the records with ``step <= step``; the kept records."""
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


class MetricsLog:
    """Appends one JSON object per line, flushed at once (a crash loses at most a torn line)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(clean_record(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# -- run directory -----------------------------------------------------------------------------


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _check_same_config(out: Path, run: RunConfig) -> None:
    """On resume, the run must be the one in ``config.yaml`` (except RESUMABLE_CHANGES)."""
    saved = _flatten(yaml.safe_load((out / CONFIG_FILE).read_text(encoding="utf-8")) or {})
    new = _flatten(run.to_dict())
    changed = sorted(
        k
        for k in saved.keys() | new.keys()
        if saved.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
    )
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"out: cannot resume {out} with a different config ({shown}); "
            f"allowed changes: {', '.join(RESUMABLE_CHANGES)}"
        )


def check_run_dir(out: Path, run: RunConfig, resume: bool) -> None:
    """Refuse a non-empty directory without ``resume``, and a foreign one with it."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file; allowed: a new or empty directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not resume:
        raise ConfigError(
            f"out: run directory {out} is not empty; allowed: a new or empty directory, "
            "or --resume to continue the run in it"
        )
    if not (out / CONFIG_FILE).is_file():
        raise ConfigError(f"out: {out} is not a formerlab run directory (no {CONFIG_FILE})")
    _check_same_config(out, run)


# -- the loop ----------------------------------------------------------------------------------


@dataclass
class LoopState:
    """Counters saved in every checkpoint (plain Python: loadable with weights_only=True)."""

    step: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    window: dict[str, float] = field(default_factory=dict)

    def reset_window(self) -> None:
        self.window = {"loss_sum": 0.0, "grad_norm_sum": 0.0, "finite_steps": 0}


# -- auxiliary losses and layer metrics (layers/aux.py) in the log window ----------------------

AUX_PREFIX = "aux:"


def add_aux_metrics(total: dict[str, Any], metrics: dict[str, Any], scale: float) -> None:
    """``total[k] += scale * metrics[k]`` for floats and, element by element, lists of floats."""
    for name, value in metrics.items():
        if isinstance(value, list):
            old = total.get(name) or [0.0] * len(value)
            total[name] = [a + scale * b for a, b in zip(old, value, strict=True)]
        else:
            total[name] = total.get(name, 0.0) + scale * value


def window_aux_means(window: dict[str, Any], steps: int) -> dict[str, Any]:
    """The window's aux metrics (sums over its finite steps) as means per step."""
    out = {}
    for key, value in window.items():
        if key.startswith(AUX_PREFIX) and steps:
            name = key.removeprefix(AUX_PREFIX)
            out[name] = [v / steps for v in value] if isinstance(value, list) else value / steps
    return out


def training_passes(model: torch.nn.Module, step: int, seed: int) -> list[tuple[float, Any]]:
    """(loss weight, context manager) for each forward/backward of one micro-batch. One plain pass,
    unless a part's class defines ``training_passes(model, step, seed)`` (a MatFormer FFN trains
    several nested widths per step); the first such part decides for the whole model."""
    for module in model.modules():
        hook = getattr(type(module), "training_passes", None)
        if hook is not None:
            return hook(model, step, seed)
    return [(1.0, nullcontext())]


def after_optimizer_step(model: torch.nn.Module) -> None:
    """Let parts that constrain their weights re-impose the constraint after each optimizer step:
    every module whose class defines ``after_optimizer_step(self)`` (e.g. a spectral-norm cap) is
    called, in ``model.modules()`` order, under ``torch.no_grad()``."""
    with torch.no_grad():
        for module in model.modules():
            if getattr(type(module), "after_optimizer_step", None) is not None:
                module.after_optimizer_step()


class Trainer:
    """One run's task, model, optimizer, schedule and counters, and what a step does with them."""

    def __init__(self, run: RunConfig, out: Path, task: Any, model: torch.nn.Module) -> None:
        self.run, self.cfg, self.out = run, run.train, out
        self.task, self.model = task, model
        self.optimizer = build_optimizer(self.cfg.optimizer, model)
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.schedule = build_schedule(self.cfg.schedule, self.cfg.steps)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.state = LoopState()
        self.state.reset_window()
        self.last_val: dict[str, Any] = {}
        self.last_loss: float | None = None
        self.checkpoint: Path | None = None
        self.time_limited = False  # stopped by train.time_limit_s before train.steps
        self.step_aux: dict[str, Any] = {}  # aux metrics of the last step, mean over micro-batches

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        accum, batch = self.cfg.grad_accum, self.cfg.batch_size
        return {
            "format": STATE_FORMAT,
            **asdict(self.state),
            "data_position": {
                "split": "train",
                "next_index": self.state.step * accum,
                "batch_size": batch,
            },
            "optimizer": self.optimizer.state_dict(),
            "rng": capture_rng(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        self.state = LoopState(**{f.name: state[f.name] for f in fields(LoopState)})

    def save(self) -> None:
        root = self.out / CHECKPOINT_DIR
        keep = self.cfg.keep_checkpoints
        self.checkpoint = save_checkpoint(
            root, self.state.step, self.model, self.state_dict(), keep
        )

    # -- one optimizer step -------------------------------------------------------------------
    def set_lr(self, step0: int) -> float:
        factor = self.schedule.factor(step0)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def forward_backward(self, step0: int) -> float:
        """Accumulate gradients over ``grad_accum`` micro-batches; the mean task loss. Auxiliary
        losses that layers record (:mod:`formerlab.layers.aux`) are added to the objective; their
        metrics, averaged over the micro-batches, are left in ``step_aux``. A micro-batch runs
        the weighted passes of :func:`training_passes` (its loss: their weighted sum)."""
        accum, total = self.cfg.grad_accum, 0.0
        self.step_aux = {}
        for i in range(accum):
            batch = self.task.batch("train", step0 * accum + i, self.cfg.batch_size)
            for weight, context in training_passes(self.model, step0, self.cfg.seed):
                with context:
                    loss, _ = self.task.loss(self.model, batch)
                aux, metrics = collect_aux(self.model)
                (weight * (loss if aux is None else loss + aux) / accum).backward()
                total += weight * float(loss.detach()) / accum
                add_aux_metrics(self.step_aux, metrics, weight / accum)
            self.state.tokens += int(batch["input_ids"].numel())
        return total

    def step(self, step0: int) -> tuple[float, float, bool]:
        """Optimizer step ``step0`` (0-based; the learning rate is already set): (loss, grad norm,
        taken?). A non-finite loss or norm leaves parameters and optimizer state untouched."""
        loss = self.forward_backward(step0)
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        finite = math.isfinite(loss) and math.isfinite(float(norm))
        if finite:
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.grad_clip, norm)
            self.optimizer.step()
            after_optimizer_step(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        return loss, float(norm), finite

    def evaluate(self) -> dict[str, Any]:
        with isolated_rng():
            metrics = self.task.evaluate(self.model, self.cfg.batch_size)
        clear_aux(self.model)
        self.model.train()
        self.last_val = {"step": self.state.step, **{k: float(v) for k, v in metrics.items()}}
        return self.last_val


class _Session:
    """One process's pass over the loop: timing, logging sinks and the progress display."""

    def __init__(self, trainer: Trainer, progress: Any, writer: Any) -> None:
        self.t, self.progress, self.writer = trainer, progress, writer
        self.metrics = MetricsLog(trainer.out / METRICS_FILE)
        self.start_step = trainer.state.step
        self.t0 = self.window_t0 = time.perf_counter()
        self.base_elapsed = trainer.state.elapsed_s
        self.window_tokens = 0

    def elapsed(self) -> float:
        return self.base_elapsed + time.perf_counter() - self.t0

    def out_of_time(self, elapsed: float | None = None) -> bool:
        limit = self.t.cfg.time_limit_s
        return limit is not None and (self.elapsed() if elapsed is None else elapsed) >= limit

    def eta(self) -> float | None:
        done = self.t.state.step - self.start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self.t0) / done * (self.t.cfg.steps - self.t.state.step)

    def emit(self, record: dict[str, Any], prefix: str) -> None:
        self.metrics.write(record)
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
        self.progress.record(clean_record(record), self.eta() if prefix == "train" else None)

    def log(self, lr: float) -> None:
        st, now = self.t.state, time.perf_counter()
        n = st.window["finite_steps"]
        loss = st.window["loss_sum"] / n if n else None
        record = {
            "step": st.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": st.window["grad_norm_sum"] / n if n else None,
            "tokens": st.tokens,
            "skipped_steps": st.skipped_steps,
            "tokens_per_s": self.window_tokens / max(now - self.window_t0, 1e-9),
            "elapsed_s": self.elapsed(),
            **window_aux_means(st.window, n),
        }
        self.t.last_loss = loss
        self.emit(record, "train")
        st.reset_window()
        self.window_t0, self.window_tokens = now, 0

    def skipped(self, loss: float, norm: float, lr: float) -> None:
        st, limit = self.t.state, self.t.cfg.max_consecutive_skips
        st.skipped_steps += 1
        st.consecutive_skips += 1
        record = {"step": st.step, "skipped": True, "loss": loss, "grad_norm": norm, "lr": lr}
        self.metrics.write({**record, "skipped_steps": st.skipped_steps})
        self.progress.message(
            f"step {st.step}: non-finite loss ({loss}) or grad norm ({norm}); step skipped, "
            f"parameters and optimizer state unchanged ({st.consecutive_skips} in a row)"
        )
        if st.consecutive_skips > limit:
            st.elapsed_s = self.elapsed()
            self.t.save()
            raise TrainingError(
                f"train.max_consecutive_skips: {st.consecutive_skips} consecutive non-finite steps "
                f"at step {st.step} exceed the limit of {limit}; stopping. Parameters are those of "
                f"the last finite step; latest checkpoint: {self.t.checkpoint}"
            )

    def after_step(self, loss: float, norm: float, taken: bool, lr: float) -> None:
        st, cfg = self.t.state, self.t.cfg
        if taken:
            st.consecutive_skips = 0
            st.window["loss_sum"] += loss
            st.window["grad_norm_sum"] += norm
            st.window["finite_steps"] += 1
            aux = {AUX_PREFIX + k: v for k, v in self.t.step_aux.items()}
            add_aux_metrics(st.window, aux, 1.0)
        else:
            self.skipped(loss, norm, lr)
        self.t.time_limited = st.step < cfg.steps and self.out_of_time()
        if self.t.time_limited:
            self.progress.message(
                f"train.time_limit_s: {cfg.time_limit_s} s reached at step {st.step} of "
                f"{cfg.steps}; stopping (final log, evaluation and checkpoint)"
            )
        last = st.step == cfg.steps or self.t.time_limited
        if st.step % cfg.log_every == 0 or last:
            self.log(lr)
        if (cfg.eval_every and st.step % cfg.eval_every == 0) or last:
            self.emit(self.t.evaluate(), "val")
        if (cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0) or last:
            st.elapsed_s = self.elapsed()
            self.t.save()

    def run(self) -> None:
        t = self.t
        t.model.train()
        # a run resumed after its time was used up takes no step; a fresh one always takes one
        t.time_limited = t.state.step < t.cfg.steps and self.out_of_time(self.base_elapsed)
        while t.state.step < t.cfg.steps and not t.time_limited:
            step0 = t.state.step
            lr = t.set_lr(step0)
            tokens_before = t.state.tokens
            loss, norm, taken = t.step(step0)
            self.window_tokens += t.state.tokens - tokens_before
            t.state.step = step0 + 1
            self.after_step(loss, norm, taken, lr)
            self.progress.advance(t.state.step)

    def close(self) -> None:
        self.metrics.close()


# -- entry point -------------------------------------------------------------------------------


def _build(run: RunConfig, out: Path) -> tuple[Any, torch.nn.Module]:
    """The task (checked against the model config) and the freshly initialised model."""
    import formerlab

    task = TASK.entry(run.task.kind, "task.kind").impl(run.task, seed=run.train.seed, workdir=out)
    task.check_model(run.model, "model")
    seed_everything(run.train.seed)
    return task, formerlab.build_model(run.model)


def _write_run_files(out: Path, run: RunConfig, task: Any) -> None:
    """``config.yaml`` (fully resolved); the task records its own data manifest in the run."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, run.to_yaml())


def _resume(trainer: Trainer, progress: Any) -> Path | None:
    """Load the newest valid checkpoint (if any) and truncate metrics.jsonl to its step."""
    ckpt = latest_valid_checkpoint(trainer.out / CHECKPOINT_DIR)
    if ckpt is not None:
        trainer.load_state_dict(load_checkpoint(ckpt, trainer.model))
        trainer.checkpoint = ckpt
        progress.message(f"resuming from {ckpt} (step {trainer.state.step})")
    else:
        progress.message(f"no valid checkpoint in {trainer.out}; starting from step 0")
    kept = truncate_metrics(trainer.out / METRICS_FILE, trainer.state.step)
    evals = [r for r in kept if "val_loss" in r]
    trainer.last_val = evals[-1] if evals else {}
    losses = [r["loss"] for r in kept if "tokens_per_s" in r]
    trainer.last_loss = losses[-1] if losses else None
    return ckpt


def _inactive(model: torch.nn.Module) -> int:
    """Parameters a token does not go through (e.g. the experts it is not routed to)."""
    counts = parameter_counts(model)
    return counts["total"] - counts["active"]


def _summary(trainer: Trainer, start: int, resumed_from: Path | None) -> dict[str, Any]:
    st = trainer.state
    return {
        "run_dir": str(trainer.out),
        "final_step": st.step,
        "start_step": start,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "last_loss": trainer.last_loss,
        "val": {k: v for k, v in trainer.last_val.items() if k != "step"},
        "skipped_steps": st.skipped_steps,
        "tokens": st.tokens,
        "elapsed_s": st.elapsed_s,
        "checkpoint": str(trainer.checkpoint) if trainer.checkpoint else None,
        "time_limited": trainer.time_limited,
        "params": sum(p.numel() for p in trainer.params),
        "active_params": sum(p.numel() for p in trainer.params) - _inactive(trainer.model),
        "data": trainer.task.data_info(),
    }


def _loop(trainer: Trainer, resume: bool, progress: bool | None) -> dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter

    cfg, out = trainer.cfg, trainer.out
    display = make_progress(progress, cfg.steps)
    with display:
        resumed_from = _resume(trainer, display) if resume else None
        start = trainer.state.step
        if start > cfg.steps:
            raise ConfigError(
                f"train.steps: {cfg.steps} is below the resumed checkpoint's step {start}; "
                f"allowed: >= {start}"
            )
        display.start_step = start
        writer = SummaryWriter(log_dir=str(out), purge_step=start + 1 if resume else None)
        session = _Session(trainer, display, writer)
        try:
            session.run()
        finally:
            session.close()
            writer.close()
    return _summary(trainer, start, resumed_from)


def train(
    run: RunConfig | dict[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``run`` into ``out_dir`` (``resume``: continue from its newest valid checkpoint).

    ``progress=None`` shows a bar on a terminal and plain lines elsewhere. Returns a summary:
    ``run_dir``, ``final_step``, ``start_step``, ``resumed_from``, ``last_loss``, ``val`` (the last
    evaluation), ``skipped_steps``, ``tokens``, ``elapsed_s``, ``checkpoint``, ``time_limited``
    (stopped by ``train.time_limit_s`` before ``train.steps``), ``params``,
    ``active_params`` (those one token goes through: fewer than ``params`` for mixture-of-experts).
    ``run`` may also be a run-file path or a plain dict (loaded with ``formerlab.load_config``).
    """
    if not hasattr(run, "train"):
        from ..run_config import load_config

        run = load_config(run)
    out = Path(out_dir)
    fault_from_env()  # an invalid FORMERLAB_FAULT fails now, not at the first checkpoint
    check_run_dir(out, run, resume)
    with torch_threads(run.train.threads or None):
        task, model = _build(run, out)
        _write_run_files(out, run, task)
        return _loop(Trainer(run, out, task, model), resume, progress)
