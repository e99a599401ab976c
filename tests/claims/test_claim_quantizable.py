"""The ``quantizable`` claim check: declaration, metric, inconclusive rules, control and wiring.

These tests check the wiring at tiny size; they are not the claim (that is ``formerlab claims run
quantizable``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import formerlab
from formerlab.claims import Inconclusive, get_check, lm_proxy, quantizable, run_claim
from formerlab.errors import ClaimError
from formerlab.registry import list_registered

Q = quantizable


def figures(loss=1.5, gap=0.1, kurtosis=40.0, inf_norm=30.0) -> dict[str, float]:
    return {
        "loss": loss,
        "w8a8_loss": loss + gap,
        "gap": gap,
        "kurtosis": kurtosis,
        "inf_norm": inf_norm,
    }


@pytest.fixture
def tiny_proxy(monkeypatch):
    setup = lm_proxy.CODE_LM_PROXY
    model = {**setup["model"], "dim": 32, "depth": 1, "num_heads": 2, "max_seq_len": 32}
    monkeypatch.setitem(setup, "model", model)
    task = {**setup["task"], "seq_len": 32, "eval_batches": 2, "max_files": 12}
    monkeypatch.setitem(setup, "task", task)
    train = {**setup["train"], "batch_size": 4, "schedule": {"kind": "cosine", "warmup_steps": 1}}
    monkeypatch.setitem(setup, "train", train)
    monkeypatch.setattr(Q, "STEPS", {"quick": 2, "full": 2})
    monkeypatch.setattr(Q, "CALIBRATION_BATCHES", 1)


def test_registered_with_complete_declaration():
    assert "quantizable" in list_registered("claim")
    check = get_check("quantizable")
    assert isinstance(check, Q.QuantizableClaim)
    assert check.arxiv == "2306.12929" and check.year == 2023
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))
    assert "3076" in check.paper_value and "1294" in check.paper_value
    assert "inconclusive" in check.criterion and "gamma=0" in check.criterion


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1.0, True), (7.0, True), (0.999, False), (0.5, False), (math.nan, False)],
)
def test_passes_is_the_written_criterion(value, expected):
    assert get_check("quantizable").passes(value) is expected
    assert (Q.MIN_MARGIN, Q.KURTOSIS_FACTOR, Q.INF_NORM_FACTOR) == (1.0, 2.0, 1.5)


def test_margin_is_the_worst_normalised_reduction():
    vanilla = figures(gap=0.2, kurtosis=100.0, inf_norm=60.0)
    t = figures(gap=0.05, kurtosis=10.0, inf_norm=20.0)
    # kurtosis 100/(2*10) = 5, inf norm 60/(1.5*20) = 2, gap 0.2/0.05 = 4
    assert Q.treatment_margin(vanilla, t) == pytest.approx(2.0)
    worse = figures(gap=0.25, kurtosis=10.0, inf_norm=20.0)  # larger W8A8 gap than vanilla
    assert Q.treatment_margin(vanilla, worse) == pytest.approx(0.8)
    assert Q.outlier_margin(vanilla, {"a": t, "b": worse}) == pytest.approx(0.8)
    big = figures(gap=0.2, kurtosis=1000.0, inf_norm=1000.0)
    tiny_gap = figures(gap=-0.01, kurtosis=1.0, inf_norm=1.0)  # gap floored, no division by ~0
    assert Q.treatment_margin(big, tiny_gap) == pytest.approx(0.2 / Q.GAP_FLOOR)
    with pytest.raises(ClaimError):
        Q.outlier_margin(vanilla, {})


def test_an_identical_treatment_fails():
    same = figures()
    margin = Q.outlier_margin(same, {"copy": dict(same)})
    assert margin == pytest.approx(0.5) and not get_check("quantizable").passes(margin)


@pytest.mark.parametrize(
    ("vanilla", "treated", "match"),
    [
        (figures(kurtosis=5.0), figures(kurtosis=1.0), "no outliers"),
        (figures(gap=0.01), figures(gap=0.0), "nothing to remove"),
        (figures(loss=1.5), figures(loss=1.56), "not at equal loss"),
    ],
)
def test_inconclusive_reasons(vanilla, treated, match):
    assert match in Q.inconclusive_reason(vanilla, {"t": treated})


def test_no_reason_when_outliers_exist_at_equal_loss():
    assert (
        Q.inconclusive_reason(figures(), {"t": figures(loss=1.54), "u": figures(loss=1.2)}) is None
    )


def test_control_attention_is_exactly_softmax():
    """clipped softmax with gamma=0, zeta=1 computes what softmax computes (float64)."""
    (control,) = Q.CONTROL.values()
    runs = [lm_proxy.proxy_run(steps=40, seed=0, attention=a) for a in (Q.VANILLA, control)]
    model_cfgs = [r.model.replace(dim=32, depth=2, num_heads=2) for r in runs]
    models = []
    for cfg in model_cfgs:
        torch.manual_seed(0)
        models.append(formerlab.build_model(cfg).double().eval())
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(models[0](ids), models[1](ids), rtol=1e-12, atol=1e-12)
    assert control == {"kind": "clipped_softmax", "gamma": 0.0, "zeta": 1.0}
    assert Q.TREATMENTS["clipped"]["gamma"] < 0 and Q.TREATMENTS["gated"]["kind"] == "gated"


def _scripted(monkeypatch, results):
    """arm_figures returns ``results`` in order and records the attention of each run."""
    kinds, values = [], iter(results)

    def fake(run, task):
        kinds.append(run.model.attention.to_dict())
        return next(values)

    monkeypatch.setattr(Q, "arm_figures", fake)
    monkeypatch.setattr(Q, "load_task", lambda run, seed: None)
    return kinds


def test_claim_passes_when_outliers_shrink_and_control_fails(monkeypatch, tmp_path):
    vanilla = figures(gap=0.3, kurtosis=200.0, inf_norm=90.0)
    clipped = figures(gap=0.02, kurtosis=10.0, inf_norm=9.0)
    gated = figures(gap=0.03, kurtosis=20.0, inf_norm=12.0)
    control = figures(gap=0.29, kurtosis=190.0, inf_norm=88.0)
    kinds = _scripted(monkeypatch, [vanilla, clipped, gated, control])
    result = run_claim("quantizable", "quick", tmp_path)
    assert [k["kind"] for k in kinds] == ["softmax", "clipped_softmax", "gated", "clipped_softmax"]
    assert kinds[3]["gamma"] == 0.0 and kinds[1]["gamma"] == -0.025
    assert result["status"] == "pass" and result["control_passed"] is False
    assert result["ours"] == pytest.approx(min(200 / 40, 90 / 18, 0.3 / 0.03))
    assert json.loads((tmp_path / "quantizable.json").read_text())["status"] == "pass"


def test_claim_without_vanilla_outliers_is_inconclusive(monkeypatch):
    _scripted(monkeypatch, [figures(kurtosis=3.2), figures(kurtosis=3.0), figures(kurtosis=3.1)])
    check = get_check("quantizable")
    with pytest.raises(Inconclusive) as info:
        check.measure("claim", "quick", 0)
    assert "no outliers at this scale" in info.value.reason and "3.20" in info.value.reason
    assert info.value.value == pytest.approx(min(3.2 / 6.0, 3.2 / 6.2))
    assert set(check.last) == {"vanilla", "clipped", "gated"}


def test_control_is_never_inconclusive(monkeypatch):
    _scripted(monkeypatch, [figures(kurtosis=3.2), figures(kurtosis=3.2)])
    assert get_check("quantizable").measure("control", "quick", 0) == pytest.approx(0.5)


def test_arm_figures_on_a_tiny_trained_model(tiny_proxy):
    run = lm_proxy.proxy_run(steps=2, seed=0, attention=Q.TREATMENTS["gated"])
    task = lm_proxy.load_task(run, 0)
    f = Q.arm_figures(run, task)
    assert set(f) == {"loss", "w8a8_loss", "gap", "kurtosis", "inf_norm"}
    assert all(math.isfinite(v) for v in f.values())
    assert f["gap"] == pytest.approx(f["w8a8_loss"] - f["loss"])
    assert f["kurtosis"] >= 1.0 and f["inf_norm"] > 0
    assert f["w8a8_loss"] != f["loss"]


def test_tiny_control_end_to_end(tiny_proxy):
    """Real training of the vanilla and control arms at tiny size (the control trains the same
    network as vanilla, so its margin is about min(1/2, 1/1.5, 1))."""
    check = get_check("quantizable")
    value = check.measure("control", "quick", 0)
    assert math.isfinite(value) and not check.passes(value)
    assert set(check.last) == {"vanilla", "clipped(0:1)"}
    vanilla, control = check.last["vanilla"], check.last["clipped(0:1)"]
    assert control["loss"] == pytest.approx(vanilla["loss"], abs=1e-3)
    assert control["kurtosis"] == pytest.approx(vanilla["kurtosis"], rel=1e-2)
