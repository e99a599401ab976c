"""Attention speed and memory benchmark over sequence length (``formerlab bench attention``).

Every requested attention kind is built through the registry exactly as a model builds it
(``build_attention(cfg, dim=256, num_heads=4, causal=..., max_seq_len=L, linear=DenseConfig())``)
and measured alone, at each length ``L``, on a ``batch_size × L × dim`` float32 input (batch 1,
dim 256, 4 heads, 2 torch threads by default):

- ``fwd_bwd_ms``: one forward plus a backward of a fixed random output gradient (into the input
  and every parameter, gradients reset to ``None`` before each call, as in training); the median
  of ``repeats`` timed calls after ``warmup`` untimed ones (and the profiled memory call below,
  which is untimed too). Wall clock, ``time.perf_counter``. ``first_call_ms`` is the first warm-up
  call's time (null without warm-up): it includes one-time costs such as compilation.
- ``peak_mem_mb``: the peak, in MiB, of the bytes allocated through PyTorch's CPU allocator during
  one forward + backward call and still live at that moment (activations, attention scores,
  kernel workspaces, gradients). It comes from ``torch.profiler`` memory events (the allocator
  reports each allocation and free with its address); blocks that existed before the call (weights,
  the input) are not counted, and memory a kernel takes from ``malloc`` directly, bypassing the
  allocator, is not seen. It is not the process's resident set size.
- Time budget: once a timed call takes longer than ``timeout_s``, that length's remaining repeats
  are dropped (its median is over the calls made, ``over_budget`` is true) and the kind's longer
  lengths are skipped: their records hold ``null`` figures and a ``reason``. A length whose peak
  memory, extrapolated from the shorter lengths, would not fit in the memory the system reports as
  available is skipped the same way, rather than risking the out-of-memory killer.
- A kind that lacks a capability the run needs (``supports_causal`` with ``causal=True``) is
  skipped with the reason on every one of its records; one whose build rejects a length (a
  ``FormerlabError``) is skipped at that length only.
- ``time_exponents`` / ``memory_exponents``: the least-squares slope of log(figure) against
  log(length) over the measured lengths in ``[fit_min, fit_max]`` (2K to 16K by default); ``null``
  with fewer than two such lengths. ``vs_softmax`` in a record is softmax's time divided by this
  kind's at the same length (when softmax is in the run).

Timing is never asserted on in tests; the figures depend on the machine and its load.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import BaseConfig, join, param
from ..errors import ConfigError, FormerlabError
from ..fileio import atomic_write
from ..registry import ATTENTION, list_registered
from ..threads import torch_threads

DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
PLOT_FORMATS = (".png", ".svg", ".pdf")
MEMORY_METRIC = (
    "peak MiB allocated through PyTorch's CPU allocator during one forward+backward and live at "
    "once (torch.profiler memory events; weights and inputs allocated before the call excluded)"
)
Log = Callable[[str], None]


@dataclass(kw_only=True)
class AttentionBenchConfig(BaseConfig):
    """What the attention benchmark measures; the defaults are the published protocol."""

    kinds: list[str] | None = param(None, doc="attention kinds (null: every registered kind)")
    lengths: list[int] = param(factory=lambda: list(DEFAULT_LENGTHS), doc="sequence lengths")
    causal: bool = param(False, doc="build every kind causal (kinds without it are skipped)")
    repeats: int = param(3, doc="timed forward+backward calls per length (median)")
    warmup: int = param(1, doc="untimed calls before the memory and timed calls")
    timeout_s: float = param(60.0, doc="time budget of one call; a kind stops growing past it")
    threads: int = param(2, doc="torch CPU threads")
    batch_size: int = param(1, doc="sequences per call")
    dim: int = param(256, doc="model width")
    num_heads: int = param(4, doc="attention heads")
    memory: bool = param(True, doc="measure peak memory (one extra, profiled call per length)")
    fit_min: int = param(2048, doc="shortest length in the exponent fit")
    fit_max: int = param(16384, doc="longest length in the exponent fit")
    seed: int = param(0, doc="seed for weights and inputs")
    configs: dict[str, dict[str, Any]] = param(
        factory=dict, doc="extra config fields per kind, e.g. {local: {window: 128}}"
    )

    def validate(self, path: str = "") -> None:
        self._check_kinds(path)
        self._check_lengths(path)
        for name, low in (("repeats", 1), ("warmup", 0), ("threads", 1), ("batch_size", 1)):
            _at_least(self, name, low, path)
        for name in ("dim", "num_heads", "fit_min"):
            _at_least(self, name, 1, path)
        if self.dim % self.num_heads:
            raise ConfigError(
                f"{join(path, 'num_heads')}: invalid value {self.num_heads}; "
                f"allowed: a divisor of dim ({self.dim})"
            )
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise _invalid(path, "timeout_s", self.timeout_s, "a finite number of seconds > 0")
        if self.fit_max <= self.fit_min:
            raise _invalid(path, "fit_max", self.fit_max, f"> fit_min ({self.fit_min})")
        self.kind_configs(path)

    def _check_kinds(self, path: str) -> None:
        if self.kinds is None:
            return
        if not self.kinds:
            raise _invalid(path, "kinds", self.kinds, "one or more attention kinds")
        for i, kind in enumerate(self.kinds):
            ATTENTION.entry(kind, join(join(path, "kinds"), i))
            if kind in self.kinds[:i]:
                raise _invalid(path, "kinds", self.kinds, f"each kind once ({kind!r} repeats)")
        for kind in self.configs:
            if kind not in self.kinds:
                raise _invalid(path, "configs", kind, f"one of the kinds run: {self.kinds}")

    def _check_lengths(self, path: str) -> None:
        if not self.lengths:
            raise _invalid(path, "lengths", self.lengths, "one or more lengths >= 1")
        for i, length in enumerate(self.lengths):
            if length < 1:
                raise _invalid(path, join("lengths", i), length, ">= 1")
        if len(set(self.lengths)) != len(self.lengths):
            raise _invalid(path, "lengths", self.lengths, "distinct lengths")

    def run_kinds(self) -> list[str]:
        return list(self.kinds) if self.kinds is not None else list_registered("attention")

    def kind_configs(self, path: str = "") -> dict[str, Any]:
        """kind -> its validated attention config (defaults plus ``configs[kind]``)."""
        out = {}
        for kind in self.run_kinds():
            fields = {**self.configs.get(kind, {}), "kind": kind}
            out[kind] = ATTENTION.config_class(kind).from_dict(
                fields, join(path, f"configs.{kind}")
            )
        return out


def _invalid(path: str, name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{join(path, name)}: invalid value {value!r}; allowed: {allowed}")


def _at_least(cfg: AttentionBenchConfig, name: str, low: int, path: str) -> None:
    if getattr(cfg, name) < low:
        raise _invalid(path, name, getattr(cfg, name), f">= {low}")


# -- the entry point ----------------------------------------------------------------------------


def attention_benchmark(
    *, plot: str | Path | None = None, log: Log | None = None, **options: Any
) -> dict[str, Any]:
    """Measure attention kinds over lengths; the figures dict (one JSON object).

    Keyword arguments are :class:`AttentionBenchConfig` fields (``kinds``, ``lengths``,
    ``causal``, ``repeats``, ``timeout_s``, ``threads``, ...); ``plot`` is a .png/.svg/.pdf path
    for the log-log plot; ``log`` receives one progress line per measurement. Every argument is
    validated before any compute.
    """
    cfg = AttentionBenchConfig.from_dict(options, "bench")
    plot_path = check_plot_path(plot)
    kind_cfgs = cfg.kind_configs("bench")
    lengths = sorted(cfg.lengths)
    start = time.perf_counter()
    with torch_threads(cfg.threads):
        threads = torch.get_num_threads()
        records = [r for k, c in kind_cfgs.items() for r in _run_kind(k, c, lengths, cfg, log)]
    result = _result(cfg, lengths, records, threads)
    if plot_path is not None:
        write_plot(result, plot_path)
        result["plot"] = str(plot_path)
    result["seconds"] = time.perf_counter() - start
    return result


def check_plot_path(plot: str | Path | None, option: str = "bench.plot") -> Path | None:
    """The plot path, or ConfigError if its format or folder is wrong (checked before compute)."""
    if plot is None:
        return None
    path = Path(plot)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise ConfigError(
            f"{option}: invalid value {str(path)!r}; allowed: a file ending in "
            f"{', '.join(PLOT_FORMATS)}"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"{option}: folder {str(path.parent)!r} does not exist")
    return path


def _result(cfg, lengths, records, threads) -> dict[str, Any]:
    _add_vs_softmax(records)
    kinds = cfg.run_kinds()
    return {
        "benchmark": "attention",
        "kinds": kinds,
        "lengths": lengths,
        "causal": cfg.causal,
        "batch_size": cfg.batch_size,
        "dim": cfg.dim,
        "num_heads": cfg.num_heads,
        "dtype": "float32",
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "timeout_s": cfg.timeout_s,
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_metric": MEMORY_METRIC if cfg.memory else None,
        "configs": {k: c.to_dict() for k, c in cfg.kind_configs().items()},
        "fit_range": [cfg.fit_min, cfg.fit_max],
        "time_exponents": _exponents(records, kinds, "fwd_bwd_ms", cfg),
        "memory_exponents": _exponents(records, kinds, "peak_mem_mb", cfg),
        "records": records,
        "plot": None,
    }


# -- one kind over the lengths ------------------------------------------------------------------


def _run_kind(kind: str, kind_cfg, lengths: list[int], cfg, log: Log | None) -> list[dict]:
    """Records for every length: measured ones, then skipped ones once the budget is spent."""
    records: list[dict] = []
    stop = missing_capability(kind_cfg, cfg.causal)
    for length in lengths:
        reason = stop or _memory_reason(records, length)
        if reason:
            record = _record(kind, length, cfg.causal, reason)
        else:
            record, stop = _measure_or_skip(kind, kind_cfg, length, cfg)
        records.append(record)
        if log is not None:
            log(_progress_line(record))
    return records


def missing_capability(kind_cfg, causal: bool) -> str | None:
    """Why ``kind_cfg`` cannot run here (a capability it does not declare), or None."""
    if causal and not ATTENTION.entry(kind_cfg.kind).impl.supports_causal:
        return f"attention {kind_cfg.kind!r} lacks supports_causal, needed by --causal"
    return None


def _record(kind: str, length: int, causal: bool, reason: str | None, **figures) -> dict:
    """One record; a skipped one (a ``reason``, no figures) holds nulls."""
    return {
        "kind": kind,
        "length": length,
        "causal": causal,
        "fwd_bwd_ms": None,
        "peak_mem_mb": None,
        "first_call_ms": None,
        "timed_calls": 0,
        "over_budget": False,
        "vs_softmax": None,
        "reason": reason,
        **figures,
    }


def _measure_or_skip(kind: str, kind_cfg, length: int, cfg) -> tuple[dict, str | None]:
    """The record at ``length`` and, if longer lengths must be skipped, why."""
    try:
        figures = measure(build_at_length(kind_cfg, length, cfg), length, cfg)
    except torch.OutOfMemoryError as exc:
        reason = f"out of memory at length {length}: {str(exc).splitlines()[0]}"
        return _record(kind, length, cfg.causal, reason), reason
    except FormerlabError as exc:
        return _record(kind, length, cfg.causal, f"rejected: {exc}"), None
    stop = None
    if figures["over_budget"]:
        stop = f"time budget: a call at length {length} took over {cfg.timeout_s:g} s"
    return _record(kind, length, cfg.causal, None, **figures), stop


def build_at_length(kind_cfg, length: int, cfg) -> torch.nn.Module:
    """The kind built as a model builds it, for sequences of ``length`` tokens, in train mode."""
    from ..layers.attention import build_attention
    from ..layers.linear import DenseConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        module = build_attention(
            kind_cfg,
            dim=cfg.dim,
            num_heads=cfg.num_heads,
            causal=cfg.causal,
            max_seq_len=length,
            linear=DenseConfig(),
        )
    return module.train()


def _progress_line(record: dict[str, Any]) -> str:
    head = f"{record['kind']} L={record['length']}"
    if record["fwd_bwd_ms"] is None:
        return f"{head}: skipped ({record['reason']})"
    mem = "" if record["peak_mem_mb"] is None else f", peak {record['peak_mem_mb']:.1f} MiB"
    return f"{head}: {record['fwd_bwd_ms']:.1f} ms fwd+bwd{mem}"


# -- one measurement ----------------------------------------------------------------------------


def measure(module: torch.nn.Module, length: int, cfg) -> dict[str, Any]:
    """Time (warm median) and peak memory of forward + backward at ``length``."""
    step = TrainStep(module, length, cfg)
    warm = [step.timed() for _ in range(cfg.warmup)]
    peak = peak_allocated_mb(step) if cfg.memory else None
    times: list[float] = []
    while len(times) < cfg.repeats and not (times and times[-1] > cfg.timeout_s):
        times.append(step.timed())
    return {
        "fwd_bwd_ms": 1e3 * statistics.median(times),
        "peak_mem_mb": peak,
        "first_call_ms": 1e3 * warm[0] if warm else None,
        "timed_calls": len(times),
        "over_budget": times[-1] > cfg.timeout_s,
    }


class TrainStep:
    """Forward, then backward of a fixed random output gradient, on a fixed random input."""

    def __init__(self, module: torch.nn.Module, length: int, cfg) -> None:
        self.module = module
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.x = torch.randn(cfg.batch_size, length, cfg.dim, requires_grad=True)
            self.grad_out = torch.randn(cfg.batch_size, length, cfg.dim)

    def reset(self) -> None:
        """Drop the gradients (outside a call, so a profiled call never frees older blocks)."""
        self.module.zero_grad(set_to_none=True)
        self.x.grad = None

    def __call__(self) -> None:
        self.module(self.x).backward(self.grad_out)

    def timed(self) -> float:
        self.reset()
        start = time.perf_counter()
        self()
        return time.perf_counter() - start


def peak_allocated_mb(fn: Callable[[], Any]) -> float:
    """Peak MiB allocated by PyTorch's CPU allocator while ``fn()`` runs, counting only blocks
    allocated during the call (so freeing an older block never lowers the figure)."""
    from torch.profiler import ProfilerActivity, profile

    getattr(fn, "reset", lambda: None)()
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # the profiler logs a line to stderr when it starts and stops
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    return _peak_bytes(_allocation_events(prof)) / 2**20


def _allocation_events(prof) -> list[tuple[int, int, int]]:
    """(time_ns, ptr, signed bytes) of every allocator event, in time order."""
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        fields = event.extra_fields
        if hasattr(fields, "alloc_size") and str(fields.device) == "cpu":
            events.append((event.start_time_ns, fields.ptr, fields.alloc_size))
    return sorted(events, key=lambda e: e[0])


def _peak_bytes(events: Sequence[tuple[int, int, int]]) -> int:
    live: dict[int, int] = {}
    current = peak = 0
    for _, ptr, size in events:
        if size > 0:
            live[ptr] = size
            current += size
            peak = max(peak, current)
        elif ptr in live:
            current -= live.pop(ptr)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration (C-level log lines included)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


# -- memory guard -------------------------------------------------------------------------------


def available_memory_mb() -> float | None:
    """MemAvailable from /proc/meminfo in MiB (None where the system does not say)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def predicted_peak_mb(records: Sequence[dict], length: int) -> float | None:
    """Peak memory at ``length`` extrapolated from the last two measured lengths (slope >= 1), or
    from the last one assuming quadratic growth; None with nothing measured."""
    points = [(r["length"], r["peak_mem_mb"]) for r in records if r["peak_mem_mb"]]
    if not points:
        return None
    last_len, last_mem = points[-1]
    slope = 2.0
    if len(points) >= 2:
        slope = max(1.0, fit_exponent(*zip(*points[-2:], strict=True)) or 1.0)
    return last_mem * (length / last_len) ** slope


def _memory_reason(records: Sequence[dict], length: int) -> str | None:
    predicted, available = predicted_peak_mb(records, length), available_memory_mb()
    if predicted is None or available is None or predicted <= 0.8 * available:
        return None
    return (
        f"memory: predicted peak {predicted:,.0f} MiB exceeds 80% of the "
        f"{available:,.0f} MiB available"
    )


# -- fits and comparisons -----------------------------------------------------------------------


def fit_exponent(
    lengths: Sequence[float],
    values: Sequence[float | None],
    lo: float = 0.0,
    hi: float = math.inf,
) -> float | None:
    """Least-squares slope of log(value) on log(length) over lengths in [lo, hi] with a positive
    value; None with fewer than two distinct such lengths."""
    pts = [
        (math.log(n), math.log(v))
        for n, v in zip(lengths, values, strict=True)
        if lo <= n <= hi and v is not None and v > 0
    ]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sxy / sxx


def _exponents(records, kinds, key: str, cfg) -> dict[str, float | None]:
    out = {}
    for kind in kinds:
        mine = [r for r in records if r["kind"] == kind]
        lengths, values = [r["length"] for r in mine], [r[key] for r in mine]
        out[kind] = fit_exponent(lengths, values, cfg.fit_min, cfg.fit_max)
    return out


def _add_vs_softmax(records: list[dict]) -> None:
    """Each record's speed relative to softmax at the same length (softmax ms / this ms)."""
    base: Mapping[int, float] = {
        r["length"]: r["fwd_bwd_ms"] for r in records if r["kind"] == "softmax" and r["fwd_bwd_ms"]
    }
    for r in records:
        if r["fwd_bwd_ms"] and r["length"] in base:
            r["vs_softmax"] = base[r["length"]] / r["fwd_bwd_ms"]


# -- plot ---------------------------------------------------------------------------------------


def write_plot(result: Mapping[str, Any], path: str | Path) -> Path:
    """Log-log time and peak memory against length, one line per kind (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key, label in zip(
        axes,
        ("fwd_bwd_ms", "peak_mem_mb"),
        ("forward+backward (ms)", "peak memory (MiB)"),
        strict=True,
    ):
        _plot_panel(ax, result, key, label)
    mode = "causal" if result["causal"] else "bidirectional"
    fig.suptitle(f"attention, {mode}, dim {result['dim']}, torch threads: {result['threads']}")
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt))


def _plot_panel(ax, result: Mapping[str, Any], key: str, label: str) -> None:
    exponents = result["time_exponents" if key == "fwd_bwd_ms" else "memory_exponents"]
    for kind in result["kinds"]:
        pts = [(r["length"], r[key]) for r in result["records"] if r["kind"] == kind and r[key]]
        if pts:
            slope = exponents.get(kind)
            name = kind if slope is None else f"{kind} (slope {slope:.2f})"
            ax.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=8)


# -- text summary -------------------------------------------------------------------------------


def summary_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per kind: ``"<ms> ms / <MiB> MiB"`` per length, the exponents, the first skip reason."""
    rows = []
    for kind in result["kinds"]:
        mine = [r for r in result["records"] if r["kind"] == kind]
        row: dict[str, Any] = {"kind": kind}
        for r in mine:
            row[str(r["length"])] = _cell(r)
        row["time_exp"] = result["time_exponents"][kind]
        row["mem_exp"] = result["memory_exponents"][kind]
        row["skipped"] = next((r["reason"] for r in mine if r["reason"]), None)
        rows.append(row)
    return rows


def _cell(record: Mapping[str, Any]) -> str:
    if record["fwd_bwd_ms"] is None:
        return "-"
    mem = record["peak_mem_mb"]
    return f"{record['fwd_bwd_ms']:.4g} ms" + ("" if mem is None else f" / {mem:.4g} MiB")


# -- command-line parsing helpers ---------------------------------------------------------------


def parse_names(text: str, option: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; ConfigError naming ``option`` for an empty item."""
    items = [s.strip() for s in text.split(",")]
    if not all(items):
        raise ConfigError(f"{option}: invalid value {text!r}; allowed: comma-separated names")
    return items


def parse_ints(text: str, option: str) -> list[int]:
    """``"512,1024"`` -> ``[512, 1024]``; ConfigError naming ``option`` for anything else."""
    try:
        return [int(s) for s in parse_names(text, option)]
    except ValueError:
        raise ConfigError(
            f"{option}: invalid value {text!r}; allowed: comma-separated integers, e.g. 512,1024"
        ) from None
