"""The ``zaya1`` claim check (MoE part): declaration, written criterion, preconditions, control and
wiring, at tiny size. The claim itself is ``formerlab claims run zaya1``."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.claims import Inconclusive, get_check, zaya1
from formerlab.errors import ClaimError
from formerlab.layers.aux import parameter_counts
from formerlab.layers.ffn.moe import MoE
from formerlab.registry import TASK, list_registered

TINY_MODEL = {**zaya1.SETUP["model"], "dim": 16, "num_heads": 2, "max_seq_len": 16}
TINY_TASK = {**zaya1.SETUP["task"], "seq_len": 16, "eval_batches": 2, "max_files": 6}
TINY_TRAIN = {**zaya1.SETUP["train"], "batch_size": 2}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(zaya1.SETUP, "model", TINY_MODEL)
    monkeypatch.setitem(zaya1.SETUP, "task", TINY_TASK)
    monkeypatch.setitem(zaya1.SETUP, "train", TINY_TRAIN)
    monkeypatch.setattr(zaya1, "STEPS", {"quick": 2, "full": 2})


def test_registered_with_complete_declaration() -> None:
    assert "zaya1" in list_registered("claim")
    check = get_check("zaya1")
    check.check_declaration()
    assert check.arxiv == "2511.17127" and check.year == 2025
    assert "collective" in check.missing and "reshaping" in check.missing
    assert len(check.seeds_for("full")) == 3
    # the full budget gates on seeds the step-count calibration (seed 0) never saw
    assert 0 in check.seeds_for("quick") and 0 not in check.seeds_for("full")
    assert zaya1.STEPS["full"] >= 900
    assert "0.02" in check.criterion and "0.5" in check.criterion and "1-expert" in check.criterion


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.02, True), (0.5, True), (0.0199, False), (0.0, False), (-0.3, False), (-math.inf, False)],
)
def test_passes_is_the_written_criterion(value, expected) -> None:
    assert get_check("zaya1").passes(value) is expected
    assert (zaya1.MIN_GAIN, zaya1.MAX_CV) == (0.02, 0.5)


def test_passes_rejects_nan() -> None:
    assert get_check("zaya1").passes(math.nan) is False


@pytest.mark.parametrize(("variant", "budget"), [("broken", "quick"), ("claim", "huge")])
def test_measure_rejects_bad_arguments_before_compute(variant, budget) -> None:
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("zaya1").measure(variant, budget, 0)


def test_arms_have_equal_active_parameters() -> None:
    dense = fl.build_model(zaya1.zaya1_run(None, 10, 0).model)
    moe = fl.build_model(zaya1.zaya1_run(zaya1.moe_ffn(zaya1.NUM_EXPERTS), 10, 0).model)
    one = fl.build_model(zaya1.zaya1_run(zaya1.moe_ffn(1), 10, 0).model)
    cfg, n = dense.config, zaya1.NUM_EXPERTS
    router = cfg.depth * cfg.dim
    d, m, o = (parameter_counts(x) for x in (dense, moe, one))
    assert m["active"] == d["total"] + n * router and o["active"] == d["total"] + router
    assert m["total"] > 3 * d["total"] // 2 and o["total"] == o["active"]
    assert moe.config.ffn.top_k == 1 and moe.config.ffn.expert.to_dict() == cfg.ffn.to_dict()
    assert 4 <= n <= 8


def test_identity_error_is_tiny_and_detects_an_ungated_combine(monkeypatch) -> None:
    model = fl.build_model(zaya1.zaya1_run(zaya1.moe_ffn(4), 10, 0).model)
    assert zaya1.identity_error(model) < zaya1.IDENTITY_TOL
    ungated = MoE.dense_reference

    def without_gates(self, x, *, use_gates=True):
        return ungated(self, x, use_gates=False)

    monkeypatch.setattr(MoE, "dense_reference", without_gates)
    assert zaya1.identity_error(model) > 1e-3


def test_evaluate_moe_reports_the_worst_layer_cv(tiny) -> None:
    run = zaya1.zaya1_run(zaya1.moe_ffn(4), 2, 0)
    task = TASK.entry("code_lm").impl(run.task, seed=0)
    model = fl.build_model(run.model)
    layers = zaya1.moe_layers(model)
    with torch.no_grad():  # last layer: every token to expert 0 (bias-free router, logits = 0)
        layers[-1].router.weight.zero_()
    loss, cv = zaya1.evaluate_moe(task, model, 2)
    assert cv == pytest.approx(math.sqrt(4 - 1))  # load (1, 0, 0, 0): std/mean = sqrt(n - 1)
    assert loss == pytest.approx(task.evaluate(model, 2)["val_loss"], rel=1e-6)


def _scripted(monkeypatch, loss_by_experts, cv=0.1, error=0.0):
    """measure() with training replaced: arms report the given val loss, CV and identity error."""
    built = []

    def train_arm(run, task):
        ffn = run.model.ffn
        experts = ffn.num_experts if ffn.kind == "moe" else 0
        built.append(experts)
        return experts

    monkeypatch.setattr(zaya1, "train_arm", train_arm)
    monkeypatch.setattr(zaya1, "evaluate_moe", lambda task, m, b: (loss_by_experts[m], cv))
    monkeypatch.setattr(zaya1, "identity_error", lambda m, seed=0: error)
    return built


def test_claim_and_control_arms_and_the_shared_dense_run(monkeypatch, tiny) -> None:
    built = _scripted(monkeypatch, {0: 2.0, zaya1.NUM_EXPERTS: 1.9, 1: 2.01})
    check = get_check("zaya1")
    assert check.measure("claim", "quick", 0) == pytest.approx(0.1)
    assert check.measure("control", "quick", 0) == pytest.approx(-0.01)
    assert built == [0, zaya1.NUM_EXPERTS, 1]  # dense trained once for claim and control
    assert check.details["load_cv"] == 0.1 and check.details["moe_loss"] == 2.01
    assert check.details["experts"] == 1 and check.details["preconditions"] == "met"


def test_small_claim_gain_is_inconclusive_with_numbers(monkeypatch, tiny) -> None:
    _scripted(monkeypatch, {0: 2.0, zaya1.NUM_EXPERTS: 1.99, 1: 2.0})
    with pytest.raises(Inconclusive) as info:
        get_check("zaya1").measure("claim", "quick", 0)
    assert info.value.value == pytest.approx(0.01) and "gain +0.0100" in info.value.reason


def test_control_with_a_large_gain_is_returned_not_excused(monkeypatch, tiny) -> None:
    _scripted(monkeypatch, {0: 2.0, zaya1.NUM_EXPERTS: 1.9, 1: 1.9})
    assert get_check("zaya1").passes(get_check("zaya1").measure("control", "quick", 0))


@pytest.mark.parametrize(("cv", "error"), [(0.5, 0.0), (0.2, 1e-6)])
def test_failed_precondition_is_minus_infinity(monkeypatch, tiny, cv, error) -> None:
    _scripted(monkeypatch, {0: 2.0, zaya1.NUM_EXPERTS: 1.0, 1: 2.0}, cv=cv, error=error)
    check = get_check("zaya1")
    assert check.measure("claim", "quick", 0) == -math.inf
    assert check.details["preconditions"] == "failed" and check.details["gain"] == 1.0


def test_measure_end_to_end_at_tiny_size(tiny) -> None:
    check = get_check("zaya1")
    try:
        value = check.measure("control", "quick", 0)
    except Inconclusive:  # pragma: no cover - the control never raises it
        pytest.fail("the control must not be inconclusive")
    assert math.isfinite(value) and check.details["identity_error"] < zaya1.IDENTITY_TOL
    assert check.details["gain"] == pytest.approx(value)
