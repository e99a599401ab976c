"""Run registered claim checks and record their verdicts as JSON (DESIGN §6).

``run_claim(key, budget)`` measures the claim and its negative control on every seed of the budget,
gates on the mean over seeds, and writes ``<out_dir>/<key>.json`` atomically with exactly the keys of
:data:`RESULT_KEYS`. The status is:

- ``"pass"``: the claim meets its criterion and the negative control does not;
- ``"fail"``: neither meets it (the check works; the claim did not reproduce here);
- ``"broken"``: the negative control meets the criterion, so the check cannot fail: it proves
  nothing and is never reported as a pass, whatever the claim measured;
- ``"inconclusive"``: a measurement raised :class:`~formerlab.claims.base.Inconclusive`; the numbers
  that were measured are kept, and ``passed`` is null.

``seeds`` in the result lists one entry per seed: ``{"seed", "claim", "control", "inconclusive"}``
(the two measured values, and the reason when that seed was inconclusive). Non-finite values are
written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` so the file stays strict JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ClaimError, ConfigError
from ..fileio import atomic_write_text
from ..registry import CLAIM
from ..threads import torch_threads
from .base import BUDGETS, ClaimCheck, Inconclusive

DEFAULT_RESULTS_DIR = Path("runs/claims")

RESULT_KEYS = (
    "key",
    "paper",
    "claim",
    "metric",
    "paper_value",
    "ours",
    "criterion",
    "passed",
    "control_passed",
    "seeds",
    "seconds",
    "env",
    "status",
)

Log = Callable[[str], None]


def get_check(key: str) -> ClaimCheck:
    """The registered check ``key``; ConfigError listing the registered claims if unknown."""
    if not isinstance(key, str):
        raise ConfigError(f"key: invalid value {key!r}; allowed: a claim key (str)")
    entry = CLAIM.entry(key, "key")
    check = entry.impl(entry.config_class())
    if not isinstance(check, ClaimCheck):
        raise ClaimError(f"claim {key!r}: {type(check).__name__} is not a ClaimCheck")
    check.check_declaration()
    return check


def run_claim(
    key: str,
    budget: str = "quick",
    out_dir: str | Path = DEFAULT_RESULTS_DIR,
    *,
    threads: int | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Run check ``key`` at ``budget`` ("quick" | "full"), write ``<out_dir>/<key>.json``, return it."""
    _check_args(budget, threads)
    check = get_check(key)
    seeds = check.seeds_for(budget)
    out_dir = _prepare_out_dir(out_dir)
    start = time.perf_counter()
    with torch_threads(threads):
        rows = [_measure_seed(check, budget, seed, log) for seed in seeds]
        env = environment(budget)
    result = _result(check, rows, time.perf_counter() - start, env)
    _write_json_atomic(out_dir / f"{key}.json", result)
    if log is not None:
        log(f"{key}: {result['status']} (ours={result['ours']}, {result['seconds']:.1f} s)")
    return result


def run_claims(
    keys: Iterable[str],
    budget: str = "quick",
    out_dir: str | Path = DEFAULT_RESULTS_DIR,
    *,
    threads: int | None = None,
    log: Log | None = None,
) -> list[dict[str, Any]]:
    """Run several checks; every key and argument is validated before the first one starts."""
    keys = list(keys)
    _check_args(budget, threads)
    for key in keys:
        get_check(key).seeds_for(budget)
    _prepare_out_dir(out_dir)
    return [run_claim(k, budget, out_dir, threads=threads, log=log) for k in keys]


def list_claims(results_dir: str | Path = DEFAULT_RESULTS_DIR) -> list[dict[str, Any]]:
    """One row per paper: registered checks (key, paper, year, coverage, status of the last run)
    and the papers whose techniques exist without a check yet (:data:`.coverage.PARTIAL`)."""
    from .coverage import PARTIAL

    rows = []
    for key in CLAIM.names():
        check = get_check(key)
        status = _last_status(Path(results_dir) / f"{key}.json")
        coverage = f"partial: {check.missing}" if check.missing else "full"
        rows.append(
            {
                "key": key,
                "paper": check.paper,
                "year": check.year,
                "coverage": coverage,
                "status": status,
            }
        )
    for key, (paper, year, note) in sorted(PARTIAL.items()):
        if key not in CLAIM.names():
            row = {"key": key, "paper": paper, "year": year, "coverage": f"partial: {note}"}
            rows.append({**row, "status": "no check yet"})
    return rows


def environment(budget: str | None = None) -> dict[str, Any]:
    """Where and when a result was measured."""
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if budget is not None:
        env["budget"] = budget
    return env


# -- measuring --------------------------------------------------------------------------------


def _check_args(budget: Any, threads: Any) -> None:
    if budget not in BUDGETS:
        raise ConfigError(f"budget: invalid value {budget!r}; allowed: {', '.join(BUDGETS)}")
    valid_threads = isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1
    if threads is not None and not valid_threads:
        raise ConfigError(f"threads: invalid value {threads!r}; allowed: an int >= 1 or None")


def _prepare_out_dir(out_dir: str | Path) -> Path:
    """Create the results folder before any compute, so a bad path fails first."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"out_dir: invalid value {str(out_dir)!r}; allowed: a writable folder ({exc.strerror})"
        ) from None
    return out_dir


def _measure_seed(check: ClaimCheck, budget: str, seed: int, log: Log | None) -> dict[str, Any]:
    row: dict[str, Any] = {"seed": seed, "claim": None, "control": None, "inconclusive": None}
    details: dict[str, Any] = {}
    for variant in ("claim", "control"):
        if log is not None:
            log(f"{check.key}: {variant}, seed {seed} ({budget})")
        check.details = {}
        try:
            row[variant] = _measure(check, variant, budget, seed)
        except Inconclusive as exc:
            row[variant] = None if exc.value is None else _as_float(check, exc.value, variant)
            note = f"{variant}: {exc.reason}"
            row["inconclusive"] = f"{row['inconclusive']}; {note}" if row["inconclusive"] else note
        if check.details:
            details[variant] = check.details
    if details:
        row["details"] = details
    return row


def _measure(check: ClaimCheck, variant: str, budget: str, seed: int) -> float:
    with _seeded(seed):
        try:
            value = check.measure(variant, budget, seed)
        except Inconclusive:
            raise
        except Exception as exc:
            raise ClaimError(
                f"claim {check.key!r}: measure({variant!r}, {budget!r}, seed={seed}) failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return _as_float(check, value, variant)


def _as_float(check: ClaimCheck, value: Any, variant: str) -> float:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClaimError(
            f"claim {check.key!r}: measure({variant!r}) returned {value!r}; allowed: a real number"
        )
    return float(value)


def _passes(check: ClaimCheck, value: float) -> bool:
    verdict = check.passes(value)
    if hasattr(verdict, "item"):
        verdict = verdict.item()
    if not isinstance(verdict, bool):
        raise ClaimError(f"claim {check.key!r}: passes() returned {verdict!r}; allowed: a bool")
    return verdict


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _verdict(check: ClaimCheck, rows: list[dict[str, Any]]) -> dict[str, Any]:
    ours = _mean([r["claim"] for r in rows])
    control = _mean([r["control"] for r in rows])
    inconclusive = any(r["inconclusive"] for r in rows)
    passed = None if inconclusive or ours is None else _passes(check, ours)
    control_passed = None if control is None else _passes(check, control)
    if control_passed:
        status = "broken"
    elif inconclusive:
        status = "inconclusive"
    else:
        status = "pass" if passed else "fail"
    return {"ours": ours, "passed": passed, "control_passed": control_passed, "status": status}


def _result(
    check: ClaimCheck, rows: list[dict[str, Any]], seconds: float, env: dict[str, Any]
) -> dict[str, Any]:
    verdict = _verdict(check, rows)
    result = {
        "key": check.key,
        "paper": check.describe(),
        "claim": check.claim,
        "metric": check.metric,
        "paper_value": check.paper_value,
        "ours": verdict["ours"],
        "criterion": check.criterion,
        "passed": verdict["passed"],
        "control_passed": verdict["control_passed"],
        "seeds": rows,
        "seconds": round(seconds, 3),
        "env": env,
        "status": verdict["status"],
    }
    return _json_safe(result)


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch for one measurement, restoring the caller's RNG states."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Strict JSON, published atomically (temp file, fsync, rename); nothing half-written."""
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _last_status(path: Path) -> str:
    if not path.is_file():
        return "not run"
    try:
        status = json.loads(path.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return "unreadable"
    return status if isinstance(status, str) else "unreadable"
