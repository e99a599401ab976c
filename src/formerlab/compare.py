"""``formerlab compare``: train variants of one run under the same budget and seeds, side by side.

    formerlab compare configs/repro/lra/listops-tiny.yaml \\
        --sweep model.attention.kind=softmax,local --seeds 3 --budget 300steps
    formerlab compare configs/examples/copy-tiny.yaml --sweep model.depth=1,2 --budget 2min

The budget is either optimizer steps (``--budget 300`` or ``300steps``, the same as ``--steps 300``)
or wall-clock time per run (``--budget 90s`` / ``2min``): each (variant, seed) then trains until its
time is up (``train.time_limit_s``: it stops after the step during which the time passed, evaluates
and checkpoints), so faster variants take more steps; the table shows the steps each reached.
``train.steps`` stays the upper bound and the horizon of the learning-rate schedule, so set it at
least as high as the fastest variant can go. A time-budgeted comparison is not bit-reproducible.

Each (variant, seed) trains in its own process (``python -m formerlab.train``), so its peak memory
is its own (``os.wait4``'s maximum resident set size) and one variant cannot warm caches for the
next. The table reports the task's headline metric (``accuracy`` when the task has one, else
``val_loss``) as mean ± standard deviation over seeds, with parameters, training throughput and peak
memory; ``report.html`` adds the learning curves and a metric-vs-throughput scatter.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import apply_overrides, deep_merge, load_with_base, read_file
from .errors import ConfigError, FormerlabError
from .fileio import atomic_write_text
from .run_config import RunConfig, load_config, resolve_presets


@dataclass(frozen=True)
class Variant:
    name: str
    data: dict[str, Any]  # the full run dict of this variant


def sweep_variants(base: dict[str, Any], spec: str) -> list[Variant]:
    """``key=v1,v2,...`` -> one variant per value (named by the value)."""
    key, sep, values = spec.partition("=")
    names = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or len(names) < 1:
        raise ConfigError(
            f"--sweep: invalid value {spec!r}; allowed: KEY=V1,V2,... e.g. model.depth=2,4"
        )
    return [Variant(v, apply_overrides(base, [f"{key.strip()}={v}"])) for v in names]


def file_variants(base: dict[str, Any], paths: list[Path]) -> list[Variant]:
    """Each YAML holds the parts of the run that differ (deep-merged into the base run)."""
    return [Variant(Path(p).stem, deep_merge(base, resolve_presets(read_file(p)))) for p in paths]


_BUDGET = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(steps?|s|sec|min)?")
_UNIT_SECONDS = {"s": 1.0, "sec": 1.0, "min": 60.0}


@dataclass(frozen=True)
class Budget:
    """What every (variant, seed) run gets: ``steps`` optimizer steps or ``seconds`` of training."""

    steps: int | None = None
    seconds: float | None = None

    def overrides(self) -> list[str]:
        if self.steps is not None:
            return [f"train.steps={self.steps}"]
        return [f"train.time_limit_s={self.seconds}"] if self.seconds is not None else []

    def describe(self) -> str:
        if self.seconds is not None:
            return f"{self.seconds:g} s of training per run"
        return f"{self.steps} steps per run" if self.steps is not None else "the run's train.steps"


def parse_budget(text: str, option: str = "--budget") -> Budget:
    """``N`` / ``Nsteps`` -> steps; ``Ns`` / ``Nmin`` -> seconds of wall-clock training."""
    allowed = (
        "N or Nsteps (optimizer steps), Ns or Nmin (wall-clock seconds / minutes per variant "
        "per seed), e.g. 300, 300steps, 90s, 2min"
    )
    match = _BUDGET.fullmatch(text.strip().lower())
    if not match:
        raise ConfigError(f"{option}: invalid value {text!r}; allowed: {allowed}")
    number, unit = match.groups()
    if unit in (None, "step", "steps"):
        if not number.isdigit() or int(number) < 1:
            raise ConfigError(f"{option}: invalid value {text!r}; steps must be an integer >= 1")
        return Budget(steps=int(number))
    seconds = float(number) * _UNIT_SECONDS[unit]
    if not seconds > 0:
        raise ConfigError(f"{option}: invalid value {text!r}; a time budget must be > 0")
    return Budget(seconds=seconds)


def choose_budget(steps: int | None, budget: str | None) -> Budget:
    """The budget from ``--steps N`` or ``--budget ...`` (at most one of them)."""
    if steps is not None and budget is not None:
        raise ConfigError("compare: give at most one of --steps N and --budget N|Nsteps|Ns|Nmin")
    if budget is not None:
        return parse_budget(budget)
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps: invalid value {steps}; allowed: >= 1")
    return Budget(steps=steps)


def plan(
    config: Path,
    *,
    variants: list[Path] = (),
    sweep: str | None = None,
    seeds: int = 3,
    steps: int | None = None,
    budget: str | None = None,
) -> list[tuple[Variant, int, RunConfig]]:
    """Every (variant, seed, run) to train, all validated before any compute."""
    if seeds < 1:
        raise ConfigError(f"--seeds: invalid value {seeds}; allowed: >= 1")
    extra = choose_budget(steps, budget).overrides()
    if bool(variants) == bool(sweep):
        raise ConfigError(
            "compare: give exactly one of --variants FILE... or --sweep KEY=V1,V2,..."
        )
    base = resolve_presets(load_with_base(config))
    chosen = sweep_variants(base, sweep) if sweep else file_variants(base, list(variants))
    if len({v.name for v in chosen}) != len(chosen):
        raise ConfigError(f"compare: variant names repeat: {[v.name for v in chosen]}")
    runs = []
    for variant in chosen:
        for seed in range(seeds):
            try:
                run = load_config(variant.data, overrides=[*extra, f"train.seed={seed}"])
            except ConfigError as exc:
                raise ConfigError(f"variant {variant.name!r}: {exc}") from None
            runs.append((variant, seed, run))
    return runs


def train_in_subprocess(run: RunConfig, out: Path) -> dict[str, Any]:
    """Train ``run`` into ``out`` in a child process; its summary plus its peak RSS in MB."""
    out.parent.mkdir(parents=True, exist_ok=True)
    config = out.parent / f".{out.name}.yaml"
    atomic_write_text(config, run.to_yaml())
    cmd = [sys.executable, "-m", "formerlab.train", str(config), "--out", str(out), "--no-progress"]
    try:
        with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
            _, status, usage = os.wait4(proc.pid, 0)  # reaps the child: its own peak RSS
            proc.returncode = os.waitstatus_to_exitcode(status)
            stdout.seek(0)
            stderr.seek(0)
            out_text, err_text = stdout.read(), stderr.read()
    finally:
        config.unlink(missing_ok=True)
    if proc.returncode != 0:
        last = (err_text.strip().splitlines() or ["(no output)"])[-1]
        raise FormerlabError(f"compare: training {out} failed: {last}")
    summary = json.loads(out_text.strip().splitlines()[-1])
    summary["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return summary


def headline(val: dict[str, float]) -> str:
    return "accuracy" if "accuracy" in val else "val_loss"


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: metric mean ± std over seeds, steps reached (min, max over seeds),
    params, tokens/s, peak memory."""
    rows = []
    for name in dict.fromkeys(r["variant"] for r in results):
        group = [r for r in results if r["variant"] == name]
        metric = headline(group[0]["val"])
        values = [r["val"][metric] for r in group]
        speeds = [r["tokens"] / max(r["elapsed_s"], 1e-9) for r in group]
        rows.append(
            {
                "variant": name,
                "metric": metric,
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "seeds": len(values),
                "steps": [min(r["final_step"] for r in group), max(r["final_step"] for r in group)],
                "params": group[0]["params"],
                "train_tokens_per_s": statistics.median(speeds),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in group),
            }
        )
    return rows


def compare(
    config: Path,
    out: Path,
    *,
    variants: list[Path] = (),
    sweep: str | None = None,
    seeds: int = 3,
    steps: int | None = None,
    budget: str | None = None,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Plan, train every (variant, seed), write ``results.json`` and ``report.html``; the table.

    The budget is ``steps`` or ``budget`` (``"300"``, ``"300steps"``, ``"90s"``, ``"2min"``; see
    :func:`parse_budget`); without either every run trains its ``train.steps``.
    """
    runs = plan(config, variants=variants, sweep=sweep, seeds=seeds, steps=steps, budget=budget)
    chosen = choose_budget(steps, budget)
    results = []
    for i, (variant, seed, run) in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {variant.name} seed {seed}")
        summary = train_in_subprocess(run, out / variant.name / f"seed_{seed}")
        results.append({"variant": variant.name, "seed": seed, **summary})
        if chosen.seconds is not None and not summary.get("time_limited"):
            log(
                f"  note: {variant.name} seed {seed} reached train.steps={run.train.steps} "
                f"before its {chosen.seconds:g} s; raise train.steps for a pure time budget"
            )
    rows = summarize(results)
    record = {"budget": asdict(chosen), "rows": rows, "runs": results}
    atomic_write_text(out / "results.json", json.dumps(record, indent=1, default=str))
    from .report.compare import write_compare_report

    write_compare_report(
        out / "report.html",
        rows,
        results,
        title=f"formerlab compare: {config}",
        budget=chosen.describe(),
        time_budget=chosen.seconds is not None,
    )
    return rows
