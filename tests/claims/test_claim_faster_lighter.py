"""The ``faster_lighter`` claim check: declaration, slope metric, inconclusive rule, control, wiring.

The benchmark's timing is replaced by synthetic power laws here (timing is never asserted on); one
test runs the real benchmark at tiny lengths for the plumbing only.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from formerlab.bench import attention as bench
from formerlab.claims import Inconclusive, faster_lighter, get_check, run_claim
from formerlab.errors import ClaimError
from formerlab.registry import list_registered

FL = faster_lighter

#: synthetic cost laws per kind: time ms = a * n**p (+ c * n), memory MiB = b * n**q
LAWS = {
    "softmax": (2e-5, 2.0, 1e-2, 1.0),
    "local": (3e-2, 1.0, 1e-2, 1.0),
    "linformer": (1e-2, 1.05, 1e-2, 1.0),
    "performer": (2e-2, 1.1, 1e-2, 0.95),
    "linear": (1e-2, 1.0, 2e-2, 1.0),
}


def _law_measure(calls):
    def fake(module, length, cfg):
        kind = type(module).__name__
        calls.append((kind, length, cfg.repeats, cfg.threads))
        a, p, b, q = LAWS[_KIND_OF[kind]]
        wobble = 1.0 + 0.01 * math.sin(length)  # not an exact power law
        return {
            "fwd_bwd_ms": a * length**p * wobble + 0.5,  # fixed overhead bends short lengths
            "peak_mem_mb": b * length**q,
            "first_call_ms": None,
            "timed_calls": cfg.repeats,
            "over_budget": False,
        }

    return fake


_KIND_OF = {
    "SoftmaxAttention": "softmax",
    "LocalAttention": "local",
    "LinformerAttention": "linformer",
    "PerformerAttention": "performer",
    "LinearAttention": "linear",
}


@pytest.fixture
def synthetic(monkeypatch):
    """The real benchmark and fits, with each measurement replaced by a synthetic power law."""
    calls: list = []
    monkeypatch.setattr(bench, "measure", _law_measure(calls))
    return calls


def numpy_slope(kind: str, key: str, lengths) -> float:
    a, p, b, q = LAWS[kind]
    xs = [n for n in lengths if n >= FL.FIT_MIN]
    if key == "time":
        ys = [a * n**p * (1.0 + 0.01 * math.sin(n)) + 0.5 for n in xs]
    else:
        ys = [b * n**q for n in xs]
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def test_registered_with_complete_declaration():
    assert "faster_lighter" in list_registered("claim")
    check = get_check("faster_lighter")
    assert isinstance(check, FL.FasterLighterClaim)
    assert check.arxiv == "2103.14636"
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))
    assert "1.25" in check.criterion and "1.6" in check.criterion
    assert "pruning" in check.missing and "distillation" in check.missing


@pytest.mark.parametrize(
    ("value", "expected"), [(1.25, True), (1.0, True), (0.4, True), (1.2501, False), (2.0, False)]
)
def test_passes_is_the_written_criterion(value, expected):
    assert get_check("faster_lighter").passes(value) is expected
    assert get_check("faster_lighter").passes(math.nan) is False
    assert (FL.MAX_LINEAR_SLOPE, FL.MIN_QUADRATIC_SLOPE, FL.FIT_MIN) == (1.25, 1.6, 1024)


def test_measure_rejects_bad_arguments_before_compute():
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("faster_lighter").measure("broken", "quick", 0)
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("faster_lighter").measure("claim", "huge", 0)


def test_quick_lengths_leave_several_points_in_the_fit():
    for budget, lengths in FL.LENGTHS.items():
        assert sum(n >= FL.FIT_MIN for n in lengths) >= 3, budget
    assert FL.EFFICIENT == {
        "local": {"window": 64},
        "linformer": {"k": 64},
        "performer": {"num_features": 64},
        "linear": {},
    }


def test_worst_slope_is_the_largest_time_or_memory_slope():
    fits = {"softmax": (2.0, 1.0), "a": (1.1, 0.9), "b": (1.0, 1.2)}
    assert FL.worst_slope(fits, ["a", "b"]) == 1.2
    assert FL.worst_slope(fits, ["softmax"]) == 2.0
    with pytest.raises(Inconclusive, match="no slope fitted for b"):
        FL.worst_slope({"a": (1.0, 1.0), "b": (None, 1.0)}, ["a", "b"])


def test_claim_slopes_match_numpy_and_control_is_softmax(synthetic):
    check = get_check("faster_lighter")
    value = check.measure("claim", "quick", 0)
    lengths = FL.LENGTHS["quick"]
    for kind in LAWS:
        time, mem = check.last[kind]
        assert time == pytest.approx(numpy_slope(kind, "time", lengths), abs=1e-9)
        assert mem == pytest.approx(numpy_slope(kind, "memory", lengths), abs=1e-9)
    expected = max(
        max(numpy_slope(k, "time", lengths), numpy_slope(k, "memory", lengths))
        for k in FL.EFFICIENT
    )
    assert value == pytest.approx(expected) and check.passes(value)
    kinds_measured = {c[0] for c in synthetic}
    assert kinds_measured == set(_KIND_OF)
    assert {(c[2], c[3]) for c in synthetic} == {(FL.REPEATS["quick"], FL.THREADS)}
    softmax = check.last["softmax"]
    synthetic.clear()
    control = check.measure("control", "quick", 0)
    assert synthetic == []  # the claim run's softmax slopes are reused
    assert check.last == {"softmax": softmax}
    assert control == pytest.approx(numpy_slope("softmax", "time", lengths))
    assert not check.passes(control)


def test_control_alone_measures_softmax_only(synthetic):
    check = get_check("faster_lighter")
    control = check.measure("control", "quick", 1)
    assert {c[0] for c in synthetic} == {"SoftmaxAttention"}  # softmax in the efficient slot
    assert set(check.last) == {"softmax"}
    assert control == pytest.approx(numpy_slope("softmax", "time", FL.LENGTHS["quick"]))
    assert not check.passes(control)


def test_claim_is_inconclusive_when_softmax_is_not_quadratic(monkeypatch, synthetic):
    monkeypatch.setitem(LAWS, "softmax", (2e-2, 1.3, 1e-2, 1.0))
    with pytest.raises(Inconclusive, match="lengths too short") as info:
        get_check("faster_lighter").measure("claim", "quick", 0)
    assert info.value.value is not None and info.value.value < FL.MAX_LINEAR_SLOPE


def test_claim_fails_when_an_efficient_kind_grows_too_fast(monkeypatch, synthetic):
    monkeypatch.setitem(LAWS, "performer", (2e-4, 1.6, 1e-2, 1.0))
    check = get_check("faster_lighter")
    value = check.measure("claim", "quick", 0)
    assert value > 1.4 and not check.passes(value)


def test_run_claim_with_synthetic_laws(synthetic, tmp_path):
    result = run_claim("faster_lighter", "quick", tmp_path)
    assert result["status"] == "pass" and result["control_passed"] is False
    saved = json.loads((tmp_path / "faster_lighter.json").read_text())
    assert saved["ours"] == pytest.approx(result["ours"])


def test_real_benchmark_at_tiny_lengths(monkeypatch):
    """The real timing path at tiny lengths: every slope is fitted and finite (values unchecked);
    the profiled memory call (seconds of profiler start-up each) is replaced by a stand-in."""
    monkeypatch.setattr(bench, "peak_allocated_mb", lambda step: 0.01 * step.x.size(1))
    monkeypatch.setattr(FL, "LENGTHS", {"quick": (32, 64, 128), "full": (32, 64, 128)})
    monkeypatch.setattr(FL, "FIT_MIN", 32)
    monkeypatch.setattr(FL, "REPEATS", {"quick": 1, "full": 1})
    check = get_check("faster_lighter")
    threads = torch.get_num_threads()
    try:
        check.measure("claim", "quick", 0)
    except Inconclusive as exc:  # softmax is not quadratic at these lengths
        assert "lengths too short" in exc.reason
    assert torch.get_num_threads() == threads  # the benchmark restores the caller's threads
    assert set(check.last) == {"softmax", *FL.EFFICIENT}
    assert all(math.isfinite(s) for fits in check.last.values() for s in fits)
    assert all(mem == pytest.approx(1.0) for _, mem in check.last.values())
