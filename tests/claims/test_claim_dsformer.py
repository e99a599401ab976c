"""The ``dsformer`` claim check: declaration, the written criterion, the decision rules, the arms'
construction (same budget, the control's masked gradient) and the wiring at tiny size. The real
quick run is ``formerlab claims run dsformer``; it is not run here."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.claims import Inconclusive, dsformer, get_check
from formerlab.errors import ClaimError
from formerlab.layers.linear import DenseSparseLinear
from formerlab.registry import list_registered


def test_registered_with_complete_declaration():
    assert "dsformer" in list_registered("claim")
    check = get_check("dsformer")
    assert isinstance(check, dsformer.DSFormerClaim)
    check.check_declaration()
    assert check.arxiv == "2312.13211" and check.year == 2023
    assert len(check.seeds_for("full")) == 3
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))
    assert "straight-through" in check.criterion and check.missing


@pytest.mark.parametrize(
    ("value", "expected"), [(1.0, True), (5.0, True), (0.999, False), (0.0, False), (-2.0, False)]
)
def test_passes_is_the_written_criterion(value, expected):
    assert get_check("dsformer").passes(value) is expected
    assert dsformer.MIN_GAIN == 1.0


def test_passes_rejects_nan():
    assert get_check("dsformer").passes(math.nan) is False


@pytest.mark.parametrize(("variant", "budget"), [("broken", "quick"), ("claim", "huge")])
def test_measure_rejects_bad_arguments_before_compute(variant, budget, monkeypatch):
    check = get_check("dsformer")
    monkeypatch.setattr(check, "_baselines", lambda *a: pytest.fail("computed"))
    with pytest.raises(ClaimError, match="allowed variants"):
        check.measure(variant, budget, 0)


def _fake(check, monkeypatch, *, dense, lowrank, fixed, stf, control):
    base = {
        "task": None,
        "dense": None,
        "dense_accuracy": dense,
        "lowrank": lowrank,
        "fixed": fixed,
        "dense_values": 10,
        "lowrank_params": {},
        "fixed_params": {},
    }
    monkeypatch.setattr(check, "_baselines", lambda budget, seed: base)
    accs = {"stf": stf, "stf_no_straight_through": control}
    sizes = {"support_moved": 0}
    monkeypatch.setattr(check, "_finetune", lambda task, d, arm, b, s: (accs[arm], sizes))


def test_metric_is_stf_minus_the_better_baseline(monkeypatch):
    check = get_check("dsformer")
    _fake(check, monkeypatch, dense=90.0, lowrank=80.0, fixed=84.0, stf=86.5, control=83.0)
    assert check.measure("claim", "quick", 0) == pytest.approx(2.5)
    assert check.details["fixed"] == 84.0 and check.details["arm"] == "stf"
    assert check.measure("control", "quick", 0) == pytest.approx(-1.0)
    assert check.details["arm"] == "stf_no_straight_through"


def test_an_untrained_dense_model_is_inconclusive(monkeypatch):
    check = get_check("dsformer")
    _fake(check, monkeypatch, dense=50.0, lowrank=40.0, fixed=41.0, stf=45.0, control=41.0)
    with pytest.raises(Inconclusive, match="dense model") as info:
        check.measure("claim", "quick", 0)
    assert info.value.value == pytest.approx(4.0)


def test_a_failing_claim_with_lossless_baselines_is_inconclusive(monkeypatch):
    check = get_check("dsformer")
    _fake(check, monkeypatch, dense=90.0, lowrank=89.5, fixed=88.0, stf=89.8, control=88.0)
    with pytest.raises(Inconclusive, match="costs nothing"):
        check.measure("claim", "quick", 0)
    assert check.measure("control", "quick", 0) == pytest.approx(-1.5)  # the control just fails
    _fake(check, monkeypatch, dense=90.0, lowrank=80.0, fixed=82.0, stf=82.5, control=82.0)
    assert check.measure("claim", "quick", 0) == pytest.approx(0.5)  # room, and a plain fail


@pytest.fixture
def one_thread():
    """Small matmuls run faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_stf_model():
    torch.manual_seed(0)
    model = fl.build_model(
        {
            "kind": "encoder",
            "vocab_size": 19,
            "dim": 16,
            "depth": 1,
            "num_heads": 2,
            "max_seq_len": 8,
            "head": {"kind": "classifier", "num_classes": 3},
        }
    )
    return fl.transform(model, {"kind": "factorize_dense_sparse", "basis": 6, "nonzeros": 2})


def test_control_zeroes_the_gradient_of_masked_entries_only(one_thread):
    ids = torch.randint(0, 19, (2, 8))
    plain, control = _tiny_stf_model(), _tiny_stf_model()
    assert dsformer.disable_straight_through(control) == 6  # q, k, v, out, fc1, fc2
    for model in (plain, control):
        model(ids).pow(2).sum().backward()
    layers = zip(plain.modules(), control.modules(), strict=True)
    for a, b in ((a, b) for a, b in layers if isinstance(a, DenseSparseLinear)):
        mask = a.support_mask()
        assert a.S_latent.grad[~mask].abs().sum() > 0
        assert not b.S_latent.grad[~mask].any()
        torch.testing.assert_close(b.S_latent.grad[mask], a.S_latent.grad[mask])


def test_control_refuses_fixed_support():
    torch.manual_seed(0)
    dense = fl.build_model(
        {
            "kind": "encoder",
            "vocab_size": 5,
            "dim": 8,
            "depth": 1,
            "num_heads": 2,
            "max_seq_len": 4,
            "head": {"kind": "none"},
        }
    )
    fixed = fl.transform(dense, {"kind": "factorize_dense_sparse", "basis": 4, "support": "fixed"})
    with pytest.raises(ClaimError, match="stf"):
        dsformer.disable_straight_through(fixed)


def test_arms_share_one_budget():
    sizes = {}
    for arm, spec in dsformer.ARMS.items():
        shapes = [(64, 64)] * 4 + [(64, 128), (128, 64)]  # q, k, v, out, fc1, fc2
        cfg = fl.transforms.TransformConfig.from_dict(spec).linear_config()
        layers = [fl.layers.linear.make_linear(cfg, i, o, bias=False) for i, o in shapes]
        sizes[arm] = sum(layer.num_parameters() for layer in layers)
        assert sizes[arm] <= dsformer.RATIO * sum(i * o for i, o in shapes)
    assert sizes["fixed"] == sizes["stf"]
    assert sizes["fixed"] >= sizes["lowrank"]
    assert sizes["fixed"] <= 1.1 * sizes["lowrank"]


def test_wiring_at_tiny_size(monkeypatch, one_thread):
    """The real measure with a few steps: every arm is trained, the dense run and arms (i), (ii)
    are shared by the claim and its control, and the numbers are recorded."""
    calls = []
    real_train = dsformer.train_model

    def counting_train(run, task, model, on_step=None):
        calls.append((run.train.steps, type(model).__name__))
        real_train(run, task, model, on_step)

    monkeypatch.setattr(dsformer, "train_model", counting_train)
    monkeypatch.setitem(dsformer.STEPS, "quick", {"dense": 3, "finetune": 2})
    task = {**dsformer.DIGITS_RUN["task"], "val_size": 64, "eval_batches": 2}
    monkeypatch.setitem(dsformer.DIGITS_RUN, "task", task)
    check = get_check("dsformer")
    values = {}
    for variant in ("claim", "control"):
        try:
            values[variant] = check.measure(variant, "quick", 0)
        except Inconclusive as exc:  # a 3-step dense model has not learned digits
            values[variant] = exc.value
        assert {"dense_accuracy", "lowrank", "fixed", "accuracy", "support_moved"} <= set(
            check.details
        )
    assert [steps for steps, _ in calls] == [3, 2, 2, 2, 2]
    assert all(math.isfinite(v) for v in values.values())
    assert check.details["lowrank_params"]["values"] <= check.details["fixed_params"]["values"]
    assert check.details["fixed_params"]["support_moved"] == 0  # a fixed support never moves
