"""``formerlab compare``: train variants of one run under the same budget and seeds, side by side.

    formerlab compare configs/repro/lra/listops-tiny.yaml \\
        --sweep model.attention.kind=softmax,local --seeds 3 --steps 300

Each (variant, seed) trains in its own process (``python -m formerlab.train``), so its peak memory
is its own (``os.wait4``'s maximum resident set size) and one variant cannot warm caches for the
next. The table reports the task's headline metric (``accuracy`` when the task has one, else
``val_loss``) as mean ± standard deviation over seeds, with parameters, training throughput and peak
memory; ``report.html`` adds the learning curves and a metric-vs-throughput scatter.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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


def plan(
    config: Path,
    *,
    variants: list[Path] = (),
    sweep: str | None = None,
    seeds: int = 3,
    steps: int | None = None,
) -> list[tuple[Variant, int, RunConfig]]:
    """Every (variant, seed, run) to train, all validated before any compute."""
    if seeds < 1:
        raise ConfigError(f"--seeds: invalid value {seeds}; allowed: >= 1")
    if bool(variants) == bool(sweep):
        raise ConfigError(
            "compare: give exactly one of --variants FILE... or --sweep KEY=V1,V2,..."
        )
    base = resolve_presets(load_with_base(config))
    chosen = sweep_variants(base, sweep) if sweep else file_variants(base, list(variants))
    if len({v.name for v in chosen}) != len(chosen):
        raise ConfigError(f"compare: variant names repeat: {[v.name for v in chosen]}")
    extra = [f"train.steps={steps}"] if steps is not None else []
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
    """One row per variant: metric mean ± std over seeds, params, tokens/s, peak memory."""
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
    log: Any = print,
) -> list[dict[str, Any]]:
    """Plan, train every (variant, seed), write ``results.json`` and ``report.html``; the table."""
    runs = plan(config, variants=variants, sweep=sweep, seeds=seeds, steps=steps)
    results = []
    for i, (variant, seed, run) in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {variant.name} seed {seed}")
        summary = train_in_subprocess(run, out / variant.name / f"seed_{seed}")
        results.append({"variant": variant.name, "seed": seed, **summary})
    rows = summarize(results)
    atomic_write_text(
        out / "results.json", json.dumps({"rows": rows, "runs": results}, indent=1, default=str)
    )
    from .report.compare import write_compare_report

    write_compare_report(out / "report.html", rows, results, title=f"formerlab compare: {config}")
    return rows
