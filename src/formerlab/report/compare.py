"""The ``formerlab compare`` report: the table, learning curves per variant and metric vs speed."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .html import figure_png_base64, new_figure, write_report


def mean_curve(run_dirs: list[str], metric: str) -> tuple[list[int], list[float]]:
    """The evaluation curve of ``metric`` averaged over seeds (steps every seed evaluated)."""
    from ..train import read_metrics

    per_run = []
    for run_dir in run_dirs:
        records = read_metrics(Path(run_dir) / "metrics.jsonl")
        per_run.append({r["step"]: r[metric] for r in records if metric in r})
    steps = sorted(set.intersection(*(set(c) for c in per_run))) if per_run else []
    return steps, [statistics.fmean(c[s] for c in per_run) for s in steps]


def curves_png(rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    fig = new_figure()
    ax = fig.add_subplot()
    for row in rows:
        runs = [r for r in results if r["variant"] == row["variant"]]
        steps, values = mean_curve([r["run_dir"] for r in runs], row["metric"])
        (line,) = ax.plot(steps, values, marker="o", markersize=3, label=row["variant"])
        ends = [
            (r["final_step"], r["val"][row["metric"]]) for r in runs if row["metric"] in r["val"]
        ]
        if ends:  # each seed's final evaluation: where it stopped (differs under a time budget)
            ax.scatter(*zip(*ends, strict=True), marker="x", color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel(f"{rows[0]['metric']} (mean over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return figure_png_base64(fig)


def scatter_png(rows: list[dict[str, Any]]) -> str:
    fig = new_figure((6.5, 4.0))
    ax = fig.add_subplot()
    for row in rows:
        ax.errorbar(row["train_tokens_per_s"], row["mean"], yerr=row["std"], fmt="o", capsize=3)
        ax.annotate(
            row["variant"],
            (row["train_tokens_per_s"], row["mean"]),
            textcoords="offset points",
            xytext=(5, 5),
        )
    ax.set_xlabel("training tokens / s")
    ax.set_ylabel(rows[0]["metric"])
    ax.grid(True, alpha=0.3)
    return figure_png_base64(fig)


def display_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparison table as people read it (used by the CLI and the report)."""
    return [
        {
            "variant": r["variant"],
            r["metric"]: f"{r['mean']:.4g} ± {r['std']:.2g}",
            "seeds": r["seeds"],
            "steps": steps_reached(r["steps"]),
            "params": r["params"],
            "train tokens/s": round(r["train_tokens_per_s"]),
            "peak RSS (MB)": round(r["peak_rss_mb"]),
        }
        for r in rows
    ]


def steps_reached(span: list[int]) -> str:
    """``[min, max]`` steps over seeds as ``"400"`` or ``"398-420"``."""
    low, high = span
    return str(low) if low == high else f"{low}-{high}"


def write_compare_report(
    path: str | Path,
    rows: list[dict[str, Any]],
    results: list[dict[str, Any]],
    *,
    title: str,
    budget: str = "the run's train.steps",
    time_budget: bool = False,
) -> Path:
    figures = [
        ("Learning curves", curves_png(rows, results)),
        (f"{rows[0]['metric']} against training speed", scatter_png(rows)),
    ]
    notes = (
        f"Each variant trained with the same budget ({budget}) and seeds, one process per run; "
        "x marks each seed's final evaluation."
    )
    if time_budget:
        notes += (
            " Under a time budget the steps reached differ (column steps) and the runs are not "
            "bit-reproducible."
        )
    return write_report(
        path,
        title=title,
        metrics_records=[],
        table=display_rows(rows),
        notes=notes,
        figures=figures,
    )
