"""A self-contained HTML report: loss curves, a results table and generated samples.

    write_report("runs/demo/report.html", title="code LM demo",
                 metrics_records=[json.loads(line) for line in open("runs/demo/metrics.jsonl")],
                 table={"val_loss": 1.42, "unigram entropy (nats)": 3.1},
                 samples=["def main():\\n    ..."])

The loss plot (``loss`` and ``val_loss`` against ``step``) is drawn with matplotlib's Agg canvas and
embedded as a base64 PNG, so the file needs nothing beside it. Every text is HTML-escaped (jinja2
autoescape). The file is written to a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from numbers import Real
from pathlib import Path
from typing import Any

import jinja2

from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text

CURVES = (("loss", "train loss"), ("val_loss", "validation loss"))


def write_report(
    path: str | Path,
    *,
    title: str,
    metrics_records: Sequence[Mapping[str, Any]],
    table: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    samples: Sequence[str] = (),
    notes: str = "",
    figures: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write the report to ``path`` (atomically) and return it.

    ``figures`` are extra ``(heading, base64 PNG)`` sections (see :func:`figure_png_base64`); the
    loss-curve section is left out when there are figures and no metrics records.
    """
    _check_args(title, metrics_records, table, samples, notes)
    curves = loss_curves(metrics_records)
    columns, rows = table_cells(table)
    html = _template().render(
        title=title,
        notes=notes,
        plot=plot_png_base64(curves) if curves else None,
        show_loss=bool(metrics_records) or not figures,
        figures=list(figures),
        columns=columns,
        rows=rows,
        samples=list(samples),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, html)


# -- inputs -------------------------------------------------------------------------------------


def _check_args(title: Any, records: Any, table: Any, samples: Any, notes: Any) -> None:
    if not isinstance(title, str):
        raise ConfigError(f"title: invalid value {title!r}; allowed: a str")
    if not isinstance(notes, str):
        raise ConfigError(f"notes: invalid value {notes!r}; allowed: a str")
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Sequence):
        raise ConfigError(f"metrics_records: invalid value {records!r}; allowed: a list of dicts")
    if isinstance(samples, str) or not isinstance(samples, Sequence):
        raise ConfigError(f"samples: invalid value {samples!r}; allowed: a list of str")
    for i, sample in enumerate(samples):
        if not isinstance(sample, str):
            raise ConfigError(f"samples[{i}]: invalid value {sample!r}; allowed: a str")
    if not isinstance(table, Mapping):
        if isinstance(table, str | bytes) or not isinstance(table, Sequence):
            raise ConfigError(f"table: invalid value {table!r}; allowed: a list of dicts or a dict")
        for i, row in enumerate(table):
            if not isinstance(row, Mapping):
                raise ConfigError(f"table[{i}]: invalid value {row!r}; allowed: a dict (one row)")


def loss_curves(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list, list]]:
    """``{label: (steps, values)}`` for ``loss`` and ``val_loss``; curves with no points are left out."""
    curves: dict[str, tuple[list, list]] = {}
    for key, label in CURVES:
        steps, values = [], []
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise DataError(f"metrics_records[{i}]: invalid value {record!r}; allowed: a dict")
            if key in record:
                steps.append(_number(record.get("step"), f"metrics_records[{i}].step"))
                values.append(_number(record[key], f"metrics_records[{i}].{key}"))
        if steps:
            curves[label] = (steps, values)
    return curves


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise DataError(f"{path}: invalid value {value!r}; allowed: a number")
    return float(value)


def table_cells(table: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> tuple[list, list]:
    """Column names and rows of ``{"text", "numeric"}`` cells; a dict becomes metric/value rows."""
    if isinstance(table, Mapping):
        table = [{"metric": k, "value": v} for k, v in table.items()]
    columns: list[str] = []
    for row in table:
        columns += [str(k) for k in row if str(k) not in columns]
    rows = []
    for row in table:
        by_name = {str(k): v for k, v in row.items()}
        rows.append([_cell(by_name.get(c, "")) for c in columns])
    return columns, rows


def _cell(value: Any) -> dict[str, Any]:
    numeric = isinstance(value, Real) and not isinstance(value, bool)
    return {"text": format_value(value), "numeric": numeric}


def format_value(value: Any) -> str:
    """Numbers for a table: ints with thousands separators, floats to 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Real):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


# -- rendering ----------------------------------------------------------------------------------


def plot_png_base64(curves: Mapping[str, tuple[list, list]]) -> str:
    """The loss curves as a base64-encoded PNG (matplotlib Agg canvas, no global pyplot state)."""
    fig = new_figure()
    ax = fig.add_subplot()
    for label, (steps, values) in curves.items():
        marker = "o" if len(steps) < 30 else None
        ax.plot(steps, values, label=label, marker=marker, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return figure_png_base64(fig)


def new_figure(size: tuple[float, float] = (7.5, 4.0)) -> Any:
    """A matplotlib Figure on an Agg canvas (no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def figure_png_base64(fig: Any) -> str:
    """Encode a figure as a base64 PNG for embedding in the report."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _template() -> jinja2.Template:
    text = resources.files(__package__).joinpath("templates/report.html").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(text)
