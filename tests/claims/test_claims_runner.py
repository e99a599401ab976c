"""The claim-check framework, exercised with small checks defined (and unregistered) here."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from formerlab.claims import (
    RESULT_KEYS,
    ClaimCheck,
    ClaimConfig,
    Inconclusive,
    list_claims,
    run_claim,
    run_claims,
)
from formerlab.errors import ClaimError, ConfigError
from formerlab.registry import CLAIM

# -- checks used by the tests: each measures something real and small --------------------------


class _Paper(ClaimCheck):
    paper = "A test paper"
    arxiv = "0000.00000"
    year = 2024
    seeds = {"quick": (0, 1), "full": (0, 1, 2)}
    calls: ClassVar[list[tuple[str, str, int]]] = []

    def measure(self, variant, budget, seed):
        type(self).calls.append((variant, budget, seed))
        return self.compute(variant, seed)


@dataclass(kw_only=True)
class SoftmaxSumConfig(ClaimConfig):
    kind: ClassVar[str] = "test_softmax_sum"


class SoftmaxSum(_Paper):
    """Softmax rows sum to one (exact identity); the control forgets to normalise."""

    claim = "Softmax outputs sum to one along the normalised axis."
    metric = "max |sum(p) - 1| in float64"
    paper_value = "exact identity"
    criterion = "max deviation < 1e-12"

    def passes(self, value):
        return value < 1e-12

    def compute(self, variant, seed):
        x = torch.randn(8, 32, dtype=torch.float64)
        p = torch.softmax(x, dim=-1) if variant == "claim" else torch.exp(x)
        return (p.sum(-1) - 1).abs().max()


@dataclass(kw_only=True)
class SampleMeanConfig(ClaimConfig):
    kind: ClassVar[str] = "test_sample_mean"


class SampleMean(_Paper):
    """The mean of 10k standard-normal samples is within 1e-9 of zero (false: noise ~1e-2)."""

    claim = "The sample mean of 10k N(0, 1) draws is zero to nine decimals."
    metric = "|sample mean|"
    paper_value = 0.0
    criterion = "|mean| < 1e-9"
    bias = 0.0

    def passes(self, value):
        return value < 1e-9

    def compute(self, variant, seed):
        shift = 1.0 if variant == "control" else self.bias
        return (torch.randn(10_000) + shift).mean().abs().item()


@dataclass(kw_only=True)
class NoControlConfig(ClaimConfig):
    kind: ClassVar[str] = "test_no_control"


class NoControl(SoftmaxSum):
    """Its 'negative control' is the claim itself, so the check cannot fail."""

    def compute(self, variant, seed):
        return super().compute("claim", seed)


@dataclass(kw_only=True)
class TooSmallConfig(ClaimConfig):
    kind: ClassVar[str] = "test_too_small"


class TooSmall(SampleMean):
    """The claimed effect needs far more samples than a quick budget allows."""

    criterion = "|mean| < 1e-2"

    def passes(self, value):
        return value < 1e-2

    def compute(self, variant, seed):
        value = (torch.randn(100) + (1.0 if variant == "control" else 0.0)).mean().abs().item()
        if variant == "claim":
            raise Inconclusive("100 samples: standard error 0.1 exceeds the threshold", value)
        return value


CHECKS = {
    "pass": (SoftmaxSumConfig, SoftmaxSum),
    "fail": (SampleMeanConfig, SampleMean),
    "broken": (NoControlConfig, NoControl),
    "inconclusive": (TooSmallConfig, TooSmall),
}


@pytest.fixture
def register():
    """Register checks for one test and unregister them afterwards."""
    keys = []

    def add(name):
        config_cls, check_cls = CHECKS[name]
        CLAIM.register(config_cls)(check_cls)
        keys.append(config_cls.kind)
        return config_cls.kind

    yield add
    for key in keys:
        CLAIM.unregister(key)
    _Paper.calls.clear()


def _read(tmp_path, key):
    return json.loads((tmp_path / f"{key}.json").read_text())


# -- verdicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("expected", ["pass", "fail", "broken", "inconclusive"])
def test_status_and_exact_schema(register, tmp_path, expected):
    key = register(expected)
    result = run_claim(key, "quick", out_dir=tmp_path)
    assert result["status"] == expected
    assert tuple(result) == RESULT_KEYS
    assert _read(tmp_path, key) == result
    assert [row["seed"] for row in result["seeds"]] == [0, 1]
    assert result["paper"] == {"title": "A test paper", "arxiv": "0000.00000", "year": 2024}
    assert set(result["env"]) >= {"torch", "threads", "python", "platform", "time"}


def test_pass_gates_on_mean_over_seeds(register, tmp_path):
    result = run_claim(register("pass"), "full", out_dir=tmp_path)
    values = [row["claim"] for row in result["seeds"]]
    assert len(values) == 3
    assert result["ours"] == pytest.approx(statistics.fmean(values))
    assert result["passed"] is True and result["control_passed"] is False
    assert all(row["control"] > 1.0 for row in result["seeds"])  # exp(x) rows do not sum to one


def test_details_noted_per_variant_and_reset(register, tmp_path, monkeypatch):
    key = register("fail")
    cls = CHECKS["fail"][1]
    original = cls.compute

    def compute(self, variant, seed):
        if variant == "claim":
            self.note(curve=[seed, seed + 1])
        return original(self, variant, seed)

    monkeypatch.setattr(cls, "compute", compute)
    result = run_claim(key, "quick", out_dir=tmp_path)
    for row in result["seeds"]:
        # the control noted nothing: the claim's details must not leak into it
        assert row["details"] == {"claim": {"curve": [row["seed"], row["seed"] + 1]}}
    assert _read(tmp_path, key)["seeds"][1]["details"]["claim"]["curve"] == [1, 2]


def test_fail_keeps_numbers(register, tmp_path):
    result = run_claim(register("fail"), out_dir=tmp_path)
    assert result["passed"] is False and result["control_passed"] is False
    assert 1e-9 < result["ours"] < 0.1  # real sampling noise, neither zero nor huge


def test_broken_check_is_never_a_pass(register, tmp_path):
    result = run_claim(register("broken"), out_dir=tmp_path)
    assert result["passed"] is True  # the claim itself holds ...
    assert result["control_passed"] is True  # ... but so does the control: the check proves nothing
    assert result["status"] == "broken"


def test_inconclusive_reports_numbers_without_verdict(register, tmp_path):
    result = run_claim(register("inconclusive"), out_dir=tmp_path)
    assert result["passed"] is None
    assert result["control_passed"] is False
    assert all(row["claim"] is not None for row in result["seeds"])
    assert result["ours"] == pytest.approx(statistics.fmean(r["claim"] for r in result["seeds"]))
    assert all("standard error" in row["inconclusive"] for row in result["seeds"])


# -- determinism and hygiene ---------------------------------------------------------------------


def test_seeded_repeatable_and_caller_rng_untouched(register, tmp_path):
    key = register("fail")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = run_claim(key, out_dir=tmp_path)
    assert torch.equal(torch.rand(3), expected_next)
    second = run_claim(key, out_dir=tmp_path)
    assert [r["claim"] for r in first["seeds"]] == [r["claim"] for r in second["seeds"]]
    assert first["seeds"][0]["claim"] != first["seeds"][1]["claim"]


def test_threads_set_for_the_run_and_restored(register, tmp_path):
    before = torch.get_num_threads()
    result = run_claim(register("pass"), out_dir=tmp_path, threads=1)
    assert result["env"]["threads"] == 1
    assert torch.get_num_threads() == before


def test_no_temporary_files_left(register, tmp_path):
    key = register("pass")
    run_claim(key, out_dir=tmp_path)
    run_claim(key, out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.json"]


def test_non_finite_values_written_as_strict_json(register, tmp_path, monkeypatch):
    key = register("fail")
    monkeypatch.setattr(SampleMean, "compute", lambda self, variant, seed: math.nan)
    result = run_claim(key, out_dir=tmp_path)
    assert result["ours"] == "NaN"
    text = (tmp_path / f"{key}.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


# -- listing -------------------------------------------------------------------------------------


def test_list_shows_last_status(register, tmp_path, monkeypatch):
    key = register("fail")
    other = register("pass")
    rows = {r["key"]: r for r in list_claims(tmp_path)}
    expected = {"key": key, "paper": "A test paper", "year": 2024, "coverage": "full"}
    assert rows[key] == {**expected, "status": "not run"}
    run_claim(key, out_dir=tmp_path)
    assert {r["key"]: r["status"] for r in list_claims(tmp_path)}[key] == "fail"
    monkeypatch.setattr(SampleMean, "criterion", "|mean| < 0.5")
    monkeypatch.setattr(SampleMean, "passes", lambda self, value: value < 0.5)
    run_claim(key, out_dir=tmp_path)
    statuses = {r["key"]: r["status"] for r in list_claims(tmp_path)}
    assert statuses[key] == "pass" and statuses[other] == "not run"


def test_list_marks_partial_coverage(register, tmp_path, monkeypatch):
    key = register("pass")
    monkeypatch.setattr(CHECKS["pass"][1], "missing", "the scale-out half")
    rows = {r["key"]: r for r in list_claims(tmp_path)}
    assert rows[key]["coverage"] == "partial: the scale-out half"
    from formerlab.claims.coverage import PARTIAL

    for paper in ("greenformers", "axformer", "budget_longformer"):
        if paper in PARTIAL:
            assert rows[paper]["coverage"].startswith("partial: ")
            assert rows[paper]["status"] == "no check yet"


def test_list_marks_unreadable_result(register, tmp_path):
    key = register("pass")
    (tmp_path / f"{key}.json").write_text("{truncated")
    assert {r["key"]: r["status"] for r in list_claims(tmp_path)}[key] == "unreadable"


# -- errors, all before any compute ---------------------------------------------------------------


def test_unknown_key_lists_registered_claims(register, tmp_path):
    known = register("pass")
    with pytest.raises(ConfigError, match=f"unknown claim kind 'nope'.*{known}"):
        run_claim("nope", out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": "huge"}, "budget: invalid value 'huge'; allowed: quick, full"),
        ({"threads": 0}, "threads: invalid value 0"),
    ],
)
def test_bad_arguments_rejected_before_compute(register, tmp_path, kwargs, match):
    key = register("pass")
    with pytest.raises(ConfigError, match=match):
        run_claim(key, out_dir=tmp_path, **kwargs)
    assert _Paper.calls == []


def test_run_claims_validates_every_key_first(register, tmp_path):
    key = register("pass")
    with pytest.raises(ConfigError, match="'missing'"):
        run_claims([key, "missing"], out_dir=tmp_path)
    assert _Paper.calls == []
    results = run_claims([key, register("fail")], out_dir=tmp_path)
    assert [r["status"] for r in results] == ["pass", "fail"]


def test_measure_crash_is_claim_error_and_writes_nothing(register, tmp_path, monkeypatch):
    key = register("pass")

    def boom(self, variant, seed):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(SoftmaxSum, "compute", boom)
    with pytest.raises(ClaimError, match=r"measure\('claim', 'quick', seed=0\).*shape mismatch"):
        run_claim(key, out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("arxiv", "", "arxiv is ''"),
        ("year", "2024", "year is '2024'"),
        ("seeds", {"full": (0,)}, r"seeds\['quick'\]"),
        ("paper_value", None, "paper_value"),
    ],
)
def test_malformed_declaration(register, tmp_path, monkeypatch, attr, value, match):
    key = register("pass")
    monkeypatch.setattr(SoftmaxSum, attr, value)
    with pytest.raises(ClaimError, match=match):
        run_claim(key, out_dir=tmp_path)
    assert _Paper.calls == []


def test_measure_must_return_a_number(register, tmp_path, monkeypatch):
    key = register("pass")
    monkeypatch.setattr(SoftmaxSum, "compute", lambda self, variant, seed: "small")
    with pytest.raises(ClaimError, match="returned 'small'; allowed: a real number"):
        run_claim(key, out_dir=tmp_path)


def test_unusable_out_dir_rejected_before_compute(register, tmp_path):
    key = register("pass")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="out_dir: invalid value .*allowed: a writable folder"):
        run_claim(key, out_dir=blocker / "results")
    assert _Paper.calls == []


# -- the HTML report -----------------------------------------------------------------------------


def test_report_has_a_card_per_check_with_numbers_seeds_plot_and_command(register, tmp_path):
    from formerlab.report.claims import claims_cards, write_claims_report

    ran = [register("pass"), register("fail"), register("broken"), register("inconclusive")]
    results = {key: run_claim(key, "quick", out_dir=tmp_path) for key in ran}
    out = write_claims_report(tmp_path, tmp_path / "site" / "report.html")
    html = out.read_text()
    cards = {card["key"]: card for card in claims_cards(tmp_path)}
    assert set(CLAIM.names()) <= set(cards)  # every registered check, run or not
    for key, result in results.items():
        card = cards[key]
        assert card["status"] == result["status"] and f'id="{key}"' in html
        assert f"formerlab claims run {key} --budget quick" in html
        assert len(card["seeds"]) == len(result["seeds"]) == 2
    # the numbers beside each other: ours and the control's mean, per seed values, the plot
    fail = results["test_sample_mean"]
    control = statistics.fmean(row["control"] for row in fail["seeds"])
    assert cards["test_sample_mean"]["ours"] == f"{fail['ours']:.4g}"
    assert cards["test_sample_mean"]["control"] == f"{control:.4g}"
    assert cards["test_sample_mean"]["plot"] and cards["test_too_small"]["plot"]
    assert html.count("data:image/png;base64,") == sum(bool(c["plot"]) for c in cards.values())
    assert "100 samples: standard error 0.1 exceeds the threshold" in html  # inconclusive reason
    assert "max deviation &lt; 1e-12" in html  # escaped criterion text
    unrun = [c for k, c in cards.items() if k not in results]
    assert unrun and all(c["status"] == "not run" and not c["plot"] for c in unrun)


def test_report_refuses_a_broken_result_file_before_writing(tmp_path):
    from formerlab.errors import DataError
    from formerlab.report.claims import write_claims_report

    (tmp_path / "lra.json").write_text('{"key": "lra", "status": "pass"}')
    with pytest.raises(DataError, match=r"lra\.json: lacks ours, seeds, env"):
        write_claims_report(tmp_path, tmp_path / "report.html")
    (tmp_path / "lra.json").write_text("{not json")
    with pytest.raises(DataError, match=r"lra\.json: not a readable claim result"):
        write_claims_report(tmp_path, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def test_report_without_results_lists_every_check_as_not_run(tmp_path):
    from formerlab.report.claims import write_claims_report

    html = write_claims_report(tmp_path / "absent", tmp_path / "r.html").read_text()
    for key in CLAIM.names():
        assert f'id="{key}"' in html
    assert "data:image/png" not in html and f"{len(CLAIM.names())} not run" in html


def test_the_shipped_quick_results_render_and_name_registered_checks(tmp_path):
    from pathlib import Path

    from formerlab.report.claims import read_results, write_claims_report

    shipped = Path(__file__).parents[2] / "results" / "claims-quick"
    results = read_results(shipped)
    assert set(results) == set(CLAIM.names())  # one result per registered check, none stale
    assert all(r["env"]["budget"] == "quick" for r in results.values())
    html = write_claims_report(shipped, tmp_path / "r.html").read_text()
    assert "not run" not in html.split("<table>")[1].split("</table>")[0]
