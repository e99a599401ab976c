"""The ``crmsnorm`` claim check: declaration, written criterion, control, Inconclusive rule, plumbing.

The real measurement (gpt-small-cpu, timed) is ``formerlab claims run crmsnorm``; here the model is
tiny and the timing is shortened or replaced.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import formerlab as fl
from formerlab.claims import Inconclusive, crmsnorm, get_check, run_claim
from formerlab.errors import ClaimError


def tiny_pre_ln(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = {"kind": "decoder_lm", "vocab_size": 64, "dim": 16, "depth": 2, "num_heads": 2}
    model = fl.build_model({**cfg, "max_seq_len": 64}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return model


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(crmsnorm, "pre_ln_model", tiny_pre_ln)
    monkeypatch.setattr(crmsnorm, "REPEATS", {"quick": 1, "full": 1})
    monkeypatch.setattr(crmsnorm, "WARMUP", 0)
    monkeypatch.setattr(crmsnorm, "BATCH", 2)
    monkeypatch.setattr(crmsnorm, "SEQ_LEN", 16)


def test_registered_with_complete_declaration() -> None:
    check = get_check("crmsnorm")
    check.check_declaration()
    assert check.arxiv == "2305.14858" and check.year == 2023 and check.missing
    assert "1e-09" in check.criterion and ">= 1" in check.criterion
    assert "control" in check.criterion and "1 %-10 %" in check.paper_value
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))


@pytest.mark.parametrize(
    ("value", "expected"), [(1.0, True), (1.08, True), (0.999, False), (0.0, False)]
)
def test_passes_is_the_written_criterion(value: float, expected: bool) -> None:
    assert get_check("crmsnorm").passes(value) is expected
    assert crmsnorm.MIN_RATIO == 1.0 and crmsnorm.IDENTITY_TOL == 1e-9
    assert get_check("crmsnorm").passes(math.nan) is False


def test_measure_rejects_bad_arguments_before_compute() -> None:
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("crmsnorm").measure("broken", "quick", 0)
    with pytest.raises(ClaimError, match="budgets"):
        get_check("crmsnorm").measure("claim", "huge", 0)


def test_control_breaks_the_identity_and_scores_zero(tiny) -> None:
    check = get_check("crmsnorm")
    assert check.measure("control", "quick", 0) == 0.0
    gaps = check.details["identity"]
    assert min(gaps.values()) > 1e-3 and "ratios" not in check.details


@pytest.mark.parametrize(
    ("rms", "copy", "outcome"),
    [
        ({"train": 1.04, "fwd": 1.02}, {"train": 1.0, "fwd": 1.0}, 1.02),
        ({"train": 0.90, "fwd": 1.10}, {"train": 0.98, "fwd": 1.01}, 0.90),
        ({"train": 0.99, "fwd": 1.10}, {"train": 0.97, "fwd": 1.01}, "inconclusive"),
    ],
)
def test_ratio_verdict_and_the_noise_band(tiny, monkeypatch, rms, copy, outcome) -> None:
    def fake(models, budget):
        return {
            "pre_ln": {"train": 1, "fwd": 1},
            "pre_ln_copy": copy,
            "pre_rmsnorm": rms,
            "pre_crmsnorm": rms,
        }

    monkeypatch.setattr(crmsnorm, "speed_ratios", fake)
    check = get_check("crmsnorm")
    if outcome == "inconclusive":
        with pytest.raises(Inconclusive, match="within the A/A timing noise") as info:
            check.measure("claim", "quick", 0)
        assert info.value.value == 0.99
    else:
        assert check.measure("claim", "quick", 0) == outcome


def test_run_claim_checks_the_identity_times_four_models_and_the_control_fails(
    tiny, tmp_path
) -> None:
    result = run_claim("crmsnorm", "quick", tmp_path)
    assert json.loads((tmp_path / "crmsnorm.json").read_text())["key"] == "crmsnorm"
    assert result["control_passed"] is False and result["seeds"][0]["control"] == 0.0
    assert result["status"] in ("pass", "fail", "inconclusive")
    claim, control = (
        result["seeds"][0]["details"]["claim"],
        result["seeds"][0]["details"]["control"],
    )
    assert max(claim["identity"].values()) <= 1e-9 < min(control["identity"].values())
    assert "ratios" not in control  # a broken identity is not timed
    ratios = claim["ratios"]
    assert set(ratios) == {"pre_ln", "pre_ln_copy", "pre_rmsnorm", "pre_crmsnorm"}
    assert ratios["pre_ln"] == {"train": 1.0, "fwd": 1.0}
    measured = result["seeds"][0]["claim"]
    assert measured == pytest.approx(min(ratios["pre_rmsnorm"].values())) and measured > 0
