"""The claim-check report: one self-contained HTML page, a card per paper (DESIGN §10, Evidence).

    formerlab claims run lra primer --budget quick     # writes runs/claims/<key>.json
    formerlab claims report                            # writes runs/claims/report.html

Every registered check gets a card, whether it has been run or not: the paper (linked to arXiv),
the claim, the paper's number beside ours, the negative control's value, the status, the criterion,
what the check leaves out, a plot of every seed's value for the claim and the control (filled when
the value meets the criterion, hollow when it does not), when and how it was measured, and the
command that reproduces it. A summary table comes first; papers whose techniques exist without a
check are listed at the end. The page embeds its figures (base64 PNG) and needs nothing beside it.

A result file that is not valid JSON, or lacks the keys ``claims run`` writes, is a
:class:`~formerlab.errors.DataError` naming the file, raised before anything is written.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from ..errors import DataError
from ..fileio import atomic_write_text
from .html import figure_png_base64, format_value, new_figure

#: statuses in the order the summary counts them
STATUSES = ("pass", "fail", "inconclusive", "broken", "not run")
#: result keys the report reads (``claims run`` writes more)
NEEDED = ("key", "status", "ours", "seeds", "env")
VARIANTS = ("claim", "control")


def read_results(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{key: result}`` of every ``*.json`` in ``results_dir`` written by ``claims run`` (an absent
    folder has none); DataError naming the first unreadable or incomplete file."""
    found: dict[str, dict[str, Any]] = {}
    folder = Path(results_dir)
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable claim result ({exc})") from exc
        lacking = [k for k in NEEDED if not isinstance(result, dict) or k not in result]
        if lacking:
            raise DataError(
                f"{path}: lacks {', '.join(lacking)}; allowed: a result file of `formerlab claims "
                "run`"
            )
        found[str(result["key"])] = result
    return found


def _number(value: Any) -> float | None:
    """A stored value as a float (``claims run`` writes non-finite ones as strings)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return float(value) if isinstance(value, int | float) else None


def _meets(check: Any, value: float | None) -> bool | None:
    if check is None or value is None or math.isnan(value):
        return None
    return bool(check.passes(value))


def seed_plot(check: Any, result: dict[str, Any]) -> str | None:
    """Every seed's claim and control value (filled: meets the criterion; hollow: does not), the
    mean of each as a bar; None when no value was measured."""
    values = {v: [_number(row.get(v)) for row in result["seeds"]] for v in VARIANTS}
    if not any(x is not None and math.isfinite(x) for xs in values.values() for x in xs):
        return None
    fig = new_figure((5.2, 2.6))
    ax = fig.add_subplot()
    colours = {"claim": "#1a7f37", "control": "#cf222e"}
    for row, variant in enumerate(VARIANTS):
        finite = [x for x in values[variant] if x is not None and math.isfinite(x)]
        for x in finite:
            filled = _meets(check, x)
            face = colours[variant] if filled is not False else "white"
            ax.plot(x, row, "o", markersize=8, markerfacecolor=face, color=colours[variant])
        if finite:
            mean = statistics.fmean(finite)
            ax.plot([mean, mean], [row - 0.3, row + 0.3], color=colours[variant], linewidth=2)
    ax.set_yticks(range(len(VARIANTS)), ["claim", "negative control"])
    ax.set_ylim(-0.6, len(VARIANTS) - 0.4)
    ax.set_xlabel("measured value per seed (bar: mean)")
    ax.grid(True, axis="x", alpha=0.3)
    return figure_png_base64(fig)


def _card(key: str, check: Any, result: dict[str, Any] | None) -> dict[str, Any]:
    described = check.describe() if check is not None else (result or {}).get("paper", {})
    budget = ((result or {}).get("env") or {}).get("budget", "quick")
    card = {
        "key": key,
        "title": described.get("title", key),
        "arxiv": described.get("arxiv", ""),
        "year": described.get("year", ""),
        "claim": check.claim if check is not None else (result or {}).get("claim", ""),
        "paper_value": check.paper_value if check is not None else result.get("paper_value"),
        "criterion": check.criterion if check is not None else result.get("criterion", ""),
        "missing": getattr(check, "missing", ""),
        "registered": check is not None,
        "command": f"formerlab claims run {key} --budget {budget}",
        "status": "not run",
        "ours": "",
        "control": "",
        "seeds": [],
        "plot": None,
        "env": {},
        "seconds": "",
        "details": "",
    }
    if result is None:
        return card
    seeds = result["seeds"]
    controls = [_number(row.get("control")) for row in seeds]
    controls = [c for c in controls if c is not None]
    card.update(
        status=str(result["status"]),
        ours=format_value(_number(result["ours"])),
        control=format_value(statistics.fmean(controls)) if controls else "",
        seeds=[
            {
                "seed": row.get("seed"),
                "claim": format_value(_number(row.get("claim"))),
                "control": format_value(_number(row.get("control"))),
                "inconclusive": row.get("inconclusive") or "",
            }
            for row in seeds
        ],
        plot=seed_plot(check, result),
        env=result["env"],
        seconds=format_value(result.get("seconds")),
        details=json.dumps([row.get("details", {}) for row in seeds], indent=1, sort_keys=True),
    )
    return card


def claims_cards(results_dir: str | Path) -> list[dict[str, Any]]:
    """One card per registered check (and per result of a check this version does not have)."""
    from ..claims import get_check
    from ..registry import CLAIM

    results = read_results(results_dir)
    keys = sorted(set(CLAIM.names()) | set(results))
    return [
        _card(key, get_check(key) if key in CLAIM.names() else None, results.get(key))
        for key in keys
    ]


def write_claims_report(
    results_dir: str | Path, out: str | Path, *, title: str = "formerlab claim checks"
) -> Path:
    """Render the report of the results in ``results_dir`` to ``out`` (atomically); return it."""
    from ..claims.coverage import PARTIAL
    from ..registry import CLAIM

    cards = claims_cards(results_dir)
    counts = Counter(card["status"] for card in cards)
    unchecked = [
        {"key": key, "paper": paper, "year": year, "note": note}
        for key, (paper, year, note) in sorted(PARTIAL.items())
        if key not in CLAIM.names()
    ]
    html = _template().render(
        title=title,
        results_dir=str(results_dir),
        counts=[(s, counts[s]) for s in STATUSES if counts[s]]
        + [(s, n) for s, n in sorted(counts.items()) if s not in STATUSES],
        cards=cards,
        unchecked=unchecked,
    )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, html)


def _template() -> jinja2.Template:
    text = resources.files(__package__).joinpath("templates/claims.html").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(text)
