"""The ``primer`` claim check: declaration, written criterion, arms, control and wiring.

These tests check the wiring at tiny size (a 1-block model, a few steps, a few stdlib files); they
are not the claim (that is ``formerlab claims run primer``).
"""

from __future__ import annotations

import json
import math

import pytest

from formerlab.claims import Inconclusive, get_check, lm_proxy, primer, run_claim
from formerlab.errors import ClaimError
from formerlab.registry import list_registered

TINY_MODEL = {"dim": 32, "depth": 1, "num_heads": 2, "max_seq_len": 32}
TINY_TASK = {"seq_len": 32, "eval_batches": 2, "max_files": 12}


@pytest.fixture
def tiny_proxy(monkeypatch):
    """The shared proxy shrunk to seconds: 1 block of width 32, 12 stdlib files, batches of 4."""
    setup = lm_proxy.CODE_LM_PROXY
    monkeypatch.setitem(setup, "model", {**setup["model"], **TINY_MODEL})
    monkeypatch.setitem(setup, "task", {**setup["task"], **TINY_TASK})
    train = {**setup["train"], "batch_size": 4, "schedule": {"kind": "cosine", "warmup_steps": 1}}
    monkeypatch.setitem(setup, "train", train)
    monkeypatch.setattr(primer, "STEPS", {"quick": 2, "full": 2})


def test_registered_with_complete_declaration():
    assert "primer" in list_registered("claim")
    check = get_check("primer")
    assert isinstance(check, primer.PrimerClaim)
    assert check.arxiv == "2109.08668" and check.year == 2021
    assert len(check.seeds_for("full")) == 3
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))
    assert "0.02" in check.criterion and "nats/byte" in check.criterion
    assert check.missing  # the compute-to-equal-loss figure is not checked


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.02, True), (0.5, True), (0.0199, False), (0.0, False), (-0.3, False), (math.nan, False)],
)
def test_passes_is_the_written_criterion(value, expected):
    assert get_check("primer").passes(value) is expected
    assert primer.MIN_GAIN == 0.02


@pytest.mark.parametrize(("variant", "budget"), [("broken", "quick"), ("claim", "huge")])
def test_measure_rejects_bad_arguments_before_compute(variant, budget):
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("primer").measure(variant, budget, 0)


def test_arms_differ_only_in_activation_and_attention():
    base = primer.arm_run(primer.BASELINE, 70, 3)
    ez = primer.arm_run(primer.PRIMER_EZ, 70, 3)
    assert (base.model.ffn.activation, base.model.attention.kind) == ("relu", "softmax")
    assert (ez.model.ffn.activation, ez.model.attention.kind) == ("relu2", "mdha")
    assert ez.model.attention.kernel_size == 3
    assert base.train.steps == ez.train.steps == 70 and base.train.seed == ez.train.seed == 3

    def rest(run):
        model = {k: v for k, v in run.model.to_dict().items() if k not in ("attention", "ffn")}
        ffn = {k: v for k, v in run.model.ffn.to_dict().items() if k != "activation"}
        return {**run.to_dict(), "model": model, "ffn": ffn}

    assert rest(base) == rest(ez)
    assert (base.model.dim, base.model.depth, base.task.kind) == (128, 4, "code_lm")


def _scripted(monkeypatch, losses):
    """arm_loss returns ``losses`` in order and records the runs it was given."""
    runs, values = [], iter(losses)

    def fake(run, task):
        runs.append(run)
        return next(values)

    monkeypatch.setattr(primer, "arm_loss", fake)
    monkeypatch.setattr(primer, "load_task", lambda run, seed: None)
    return runs


def test_claim_and_control_share_the_baseline(monkeypatch):
    runs = _scripted(monkeypatch, [2.0, 1.9, 2.005])
    check = get_check("primer")
    assert check.measure("claim", "quick", 5) == pytest.approx(0.1)
    assert check.measure("control", "quick", 5) == pytest.approx(-0.005)
    assert len(runs) == 3  # baseline trained once for both variants
    baseline, treated, control = runs
    assert treated.model.attention.kind == "mdha" and treated.train.seed == 5
    assert control.model.attention.kind == "softmax" and control.model.ffn.activation == "relu"
    assert control.train.seed == 5 + primer.CONTROL_SEED_OFFSET
    assert baseline.train.seed == 5 and baseline.train.steps == primer.STEPS["quick"]
    assert check.last == {"baseline": 2.0, "other": 2.005, "gain": pytest.approx(-0.005)}


@pytest.mark.parametrize("gain", [0.0, 0.019, -0.019])
def test_claim_without_a_clear_effect_is_inconclusive(monkeypatch, gain):
    _scripted(monkeypatch, [2.0, 2.0 - gain])
    with pytest.raises(Inconclusive) as info:
        get_check("primer").measure("claim", "quick", 0)
    assert info.value.value == pytest.approx(gain)
    assert "baseline 2.0000" in info.value.reason


def test_claim_clearly_worse_is_returned_and_fails(monkeypatch):
    _scripted(monkeypatch, [2.0, 2.1])
    check = get_check("primer")
    value = check.measure("claim", "quick", 0)
    assert value == pytest.approx(-0.1) and not check.passes(value)


def test_small_control_difference_is_returned_not_inconclusive(monkeypatch):
    _scripted(monkeypatch, [2.0, 2.003])
    assert get_check("primer").measure("control", "quick", 0) == pytest.approx(-0.003)


def test_run_claim_records_pass_and_failed_control(monkeypatch, tmp_path):
    _scripted(monkeypatch, [2.0, 1.9, 2.01])
    result = run_claim("primer", "quick", tmp_path)
    assert result["status"] == "pass" and result["control_passed"] is False
    assert result["ours"] == pytest.approx(0.1)
    assert json.loads((tmp_path / "primer.json").read_text())["status"] == "pass"


def test_tiny_training_end_to_end(tiny_proxy):
    """Real training of all three arms at tiny size: finite losses, plumbing intact."""
    check = get_check("primer")
    try:
        value = check.measure("claim", "quick", 0)
    except Inconclusive as exc:
        value = exc.value
    assert math.isfinite(value)
    control = check.measure("control", "quick", 0)
    assert math.isfinite(control)
    assert 4.0 < check.last["baseline"] < 6.0  # ~ln(256) = 5.55 after 2 steps
    assert check.last["other"] != check.last["baseline"]  # another init really was trained
