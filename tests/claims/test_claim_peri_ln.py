"""The ``peri_ln`` claim check: declaration, the written conditions, control, plumbing at tiny size.

The real measurement (deep code LM, a few hundred steps per arm) is ``formerlab claims run peri_ln``.
"""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.claims import Inconclusive, get_check, peri_ln
from formerlab.claims.peri_ln import Arm, conditions
from formerlab.errors import ClaimError
from formerlab.layers.norm import LayerNorm


def arm(val_loss=2.0, grad_norms=None, layer_rms=(0.1, 1.0, 1.5, 2.0)) -> Arm:
    return Arm(val_loss, list(grad_norms or [1.0] * 40), list(layer_rms))


def test_registered_with_complete_declaration() -> None:
    check = get_check("peri_ln")
    check.check_declaration()
    assert check.arxiv == "2502.02732" and check.year == 2025 and check.missing
    assert "all 4 conditions" in check.criterion and "Pre-LN vs Pre-LN" in check.criterion
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))


@pytest.mark.parametrize(("value", "expected"), [(4.0, True), (3.5, False), (0.0, False)])
def test_passes_is_the_written_criterion(value: float, expected: bool) -> None:
    assert get_check("peri_ln").passes(value) is expected
    assert get_check("peri_ln").passes(math.nan) is False


def test_growth_and_spike_definitions() -> None:
    a = arm(layer_rms=[0.02, 0.5, 4.0, 2.0])
    assert a.growth == pytest.approx(8.0)  # max block output / first block output
    spiky = [1.0] * 30 + [5.0] + [1.0] * 9
    assert arm(grad_norms=spiky).max_spike == pytest.approx(5.0)
    assert arm(grad_norms=[1.0] * 39 + [math.nan]).max_spike == math.inf


def test_conditions_favour_peri_only_when_it_is_better() -> None:
    pre_low, pre_high = arm(2.0), arm(2.5, [1.0] * 30 + [6.0] + [1.0] * 9, [0.1, 1, 10, 30])
    peri_low, peri_high = arm(2.02), arm(2.1, [1.0] * 30 + [2.0] + [1.0] * 9, [0.1, 1, 2, 3])
    assert conditions(pre_low, pre_high, peri_low, peri_high) == dict.fromkeys(
        peri_ln.CONDITIONS, True
    )
    same = conditions(pre_low, pre_high, pre_low, pre_high)  # the control: identical arms
    assert not same["growth"] and not same["spikes"]
    diverged = Arm(math.inf, [1.0, math.inf], [math.inf] * 4)
    met = conditions(pre_low, diverged, peri_low, peri_high)
    assert met["stability"] and met["growth"] and met["spikes"]
    worse_low = conditions(pre_low, pre_high, arm(2.06), peri_high)
    assert not worse_low["low_lr_parity"]


def test_increment_precondition_is_exact_and_can_fail(monkeypatch) -> None:
    assert peri_ln.increment_rms_error() <= peri_ln.INCREMENT_ATOL
    monkeypatch.setattr(LayerNorm, "forward", lambda self, x: 2 * x)
    assert peri_ln.increment_rms_error() > 0.5


def test_measure_rejects_bad_arguments_before_compute() -> None:
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("peri_ln").measure("broken", "quick", 0)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(peri_ln, "STEPS", {"quick": 22, "full": 22})
    monkeypatch.setattr(peri_ln, "DEPTH", {"quick": 2, "full": 2})
    task = {"kind": "code_lm", "seq_len": 16, "eval_batches": 1, "max_files": 12}
    monkeypatch.setattr(peri_ln, "CODE_LM_TASK", task)
    calls = []
    real = peri_ln.train_arm
    monkeypatch.setattr(peri_ln, "train_arm", lambda run, t: calls.append(run) or real(run, t))
    return calls


def test_claim_and_control_plumbing_at_tiny_size(tiny) -> None:
    check = get_check("peri_ln")
    try:
        value = check.measure("claim", "quick", 0)
    except Inconclusive as exc:
        value = exc.value
    assert 0 <= value <= 4 and value == sum(check.details["conditions"].values())
    numbers = dict(check.details)
    control = check.measure("control", "quick", 0)
    assert not check.passes(control) and control <= 2
    placements = sorted((r.model.norm_placement, r.train.optimizer.lr) for r in tiny)
    assert placements == [("peri", 1e-3), ("peri", 1e-2), ("pre", 1e-3), ("pre", 1e-2)]
    assert numbers["test"] == "peri" and check.details["test"] == "pre"
    assert len(numbers["test_high"]["layer_rms"]) == 3  # embedding + 2 blocks
    assert len(numbers["pre_low"]["grad_norms"]) == 22
    assert len(tiny[0].model.to_dict()) and all(r.train.steps == 22 for r in tiny)
    assert torch.get_num_threads() >= 1
