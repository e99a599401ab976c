"""The ``dsformer`` claim check: declaration, the written criterion, the decision rules, the arms'
construction (exactly the same budget, the control's masked gradient), the calibration rule and the
wiring at tiny size. The real quick run is ``formerlab claims run dsformer``; it is not run here."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.claims import Inconclusive, dsformer, get_check
from formerlab.claims.lm_proxy import CODE_LM_PROXY
from formerlab.errors import ClaimError
from formerlab.layers.linear import DenseSparseLinear, LowRankLinear
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
    assert "CALIBRATION_PENDING" not in dsformer.__doc__
    assert dsformer.RATIO in dsformer.CANDIDATE_RATIOS


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


def _fake(check, monkeypatch, *, dense, lowrank, fixed, stf, control, bits=2.0, unigram=4.7):
    base = {
        "task": None,
        "dense": None,
        "batches": [],
        "dense_accuracy": dense,
        "dense_val_bits": bits,
        "unigram_bits": unigram,
        "lowrank": lowrank,
        "fixed": fixed,
        "dense_values": 10,
        "lowrank_params": {},
        "fixed_params": {},
    }
    monkeypatch.setattr(check, "_baselines", lambda budget, seed: base)
    accs = {"stf": stf, "stf_no_straight_through": control}
    sizes = {"support_moved": 0}
    monkeypatch.setattr(check, "_finetune", lambda b, arm, budget, seed: (accs[arm], sizes))


def test_metric_is_stf_minus_the_better_baseline(monkeypatch):
    check = get_check("dsformer")
    _fake(check, monkeypatch, dense=60.0, lowrank=50.0, fixed=54.0, stf=56.5, control=53.0)
    assert check.measure("claim", "quick", 0) == pytest.approx(2.5)
    assert check.details["fixed"] == 54.0 and check.details["arm"] == "stf"
    assert check.details["unigram_bits"] == 4.7
    assert check.measure("control", "quick", 0) == pytest.approx(-1.0)
    assert check.details["arm"] == "stf_no_straight_through"


def test_a_dense_model_near_the_unigram_entropy_is_inconclusive(monkeypatch):
    check = get_check("dsformer")
    kw = {"dense": 60.0, "lowrank": 50.0, "fixed": 51.0, "stf": 55.0, "control": 51.0}
    _fake(check, monkeypatch, bits=3.75, unigram=4.7, **kw)  # 0.95 bit below: not learned
    for variant in ("claim", "control"):
        with pytest.raises(Inconclusive, match="not learned") as info:
            check.measure(variant, "quick", 0)
    assert info.value.value == pytest.approx(0.0)  # the control's number is kept
    _fake(check, monkeypatch, bits=3.7, unigram=4.7, **kw)  # exactly the margin: learned
    assert check.measure("claim", "quick", 0) == pytest.approx(4.0)


def test_a_failing_claim_with_lossless_baselines_is_inconclusive(monkeypatch):
    check = get_check("dsformer")
    _fake(check, monkeypatch, dense=60.0, lowrank=59.5, fixed=58.0, stf=59.8, control=58.0)
    with pytest.raises(Inconclusive, match="costs nothing"):
        check.measure("claim", "quick", 0)
    assert check.measure("control", "quick", 0) == pytest.approx(-1.5)  # the control just fails
    _fake(check, monkeypatch, dense=60.0, lowrank=50.0, fixed=52.0, stf=52.5, control=52.0)
    assert check.measure("claim", "quick", 0) == pytest.approx(0.5)  # room, and a plain fail


def test_calibration_takes_the_largest_ratio_that_costs_low_rank_a_point(monkeypatch):
    arms = []
    dense = 60.0
    lowrank = {0.4: 59.5, 0.3: 58.9, 0.2: 57.0, 0.1: 50.0}
    monkeypatch.setattr(dsformer, "pretrain", lambda b, s: {**_BASE, "dense_accuracy": dense})

    def fake_finetune(base, arm, budget, seed, ratio):
        arms.append(arm)
        return lowrank[ratio], {}

    monkeypatch.setattr(dsformer, "finetune", fake_finetune)
    out = dsformer.calibrate("quick", 0)
    assert out["ratio"] == 0.3 and out["lowrank"] == lowrank
    assert set(arms) == {"lowrank"}  # the claim's own arms never take part
    lowrank = dict.fromkeys(dsformer.CANDIDATE_RATIOS, 59.5)
    assert dsformer.calibrate("quick", 0)["ratio"] == min(dsformer.CANDIDATE_RATIOS)


_BASE = {"dense_val_bits": 2.0, "unigram_bits": 4.7}


def _dense_lm():
    torch.manual_seed(0)
    return fl.build_model(dsformer.LM_RUN["model"])


@pytest.mark.parametrize("ratio", dsformer.CANDIDATE_RATIOS)
def test_arms_store_exactly_the_same_values(ratio):
    dense = _dense_lm()
    dense_values = sum(
        m.weight.numel() for n, m in dense.named_modules() if dsformer._projection(n)
    )
    models = {arm: dsformer.factorize(dense, arm, ratio) for arm in dsformer.ARMS}
    sizes = {arm: dsformer.factorized_parameters(m)["values"] for arm, m in models.items()}
    assert sizes["lowrank"] == sizes["fixed"] == sizes["stf"] <= ratio * dense_values
    # per attention projection and per FFN pair, not only in total
    for block in range(dsformer.LM_RUN["model"]["depth"]):
        for part in ("attn", "ffn"):
            per_arm = {
                arm: sorted(
                    m.num_parameters()
                    for n, m in model.named_modules()
                    if f"blocks.{block}.{part}." in n
                    and isinstance(m, (LowRankLinear, DenseSparseLinear))
                )
                for arm, model in models.items()
            }
            if part == "attn":
                assert len(per_arm["lowrank"]) == 4  # q, k, v, out
                assert per_arm["lowrank"] == per_arm["fixed"] == per_arm["stf"]
            else:
                assert len(per_arm["lowrank"]) == 2  # fc1, fc2
                assert sum(per_arm["lowrank"]) == sum(per_arm["fixed"]) == sum(per_arm["stf"])
    assert all(p.isfinite().all() for p in models["stf"].parameters())


def test_low_rank_arm_is_factorize_lowrank_at_the_ratio():
    dense = _dense_lm()
    ours = dsformer.factorize(dense, "lowrank", dsformer.RATIO)
    plain = fl.transform(dense, {"kind": "factorize_lowrank", "ratio": dsformer.RATIO})
    ranks = [(n, m.rank) for n, m in ours.named_modules() if isinstance(m, LowRankLinear)]
    assert ranks == [(n, m.rank) for n, m in plain.named_modules() if isinstance(m, LowRankLinear)]
    ids = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(ours.double()(ids), plain.double()(ids), rtol=1e-12, atol=1e-12)


def test_dense_sparse_arms_differ_only_in_the_support_mode():
    dense = _dense_lm()
    ranks = dsformer.part_ranks(dense, dsformer.RATIO)
    fixed, stf = (dsformer.arm_transforms(arm, ranks) for arm in ("fixed", "stf"))
    assert [{**s, "support": None} for s in fixed] == [{**s, "support": None} for s in stf]
    assert {s["basis"] for s in stf} == {2 * r - dsformer.NONZEROS for r in ranks.values()}
    with pytest.raises(ClaimError, match="allowed: lowrank, fixed, stf"):
        dsformer.arm_transforms("dense", ranks)


def test_lm_run_is_the_small_proxy():
    run = dsformer.lm_run(40, 3, 1.0e-3)
    assert (run.model.dim, run.model.depth, run.task.seq_len) == (64, 2, 128)
    assert (run.train.steps, run.train.seed, run.train.optimizer.lr) == (40, 3, 1.0e-3)
    assert run.train.schedule.warmup_steps == 4
    assert CODE_LM_PROXY["model"]["depth"] == 4  # the shared proxy is not modified


class _Echo(torch.nn.Module):
    """Predicts that the next byte repeats the current one."""

    def forward(self, ids, attention_mask=None):
        return torch.nn.functional.one_hot(ids, 256).double()


def test_next_byte_accuracy_counts_argmax_hits():
    ids = torch.randint(0, 4, (3, 50))
    labels = torch.randint(0, 4, (3, 50))
    batches = [
        {"input_ids": ids[:2], "labels": labels[:2]},
        {"input_ids": ids[2:], "labels": labels[2:]},
    ]
    expected = 100.0 * (ids == labels).double().mean().item()
    assert 0 < expected < 100
    assert dsformer.next_byte_accuracy(_Echo(), batches) == pytest.approx(expected, abs=1e-12)


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
    monkeypatch.setitem(dsformer.LM_RUN, "task", {**dsformer.LM_RUN["task"], "eval_batches": 2})
    check = get_check("dsformer")
    values = {}
    for variant in ("claim", "control"):
        try:
            values[variant] = check.measure(variant, "quick", 0)
        except Inconclusive as exc:  # a 3-step dense model has not learned the data
            values[variant] = exc.value
        assert {"dense_accuracy", "dense_val_bits", "lowrank", "fixed", "accuracy"} <= set(
            check.details
        )
    assert [steps for steps, _ in calls] == [3, 2, 2, 2, 2]
    assert all(math.isfinite(v) for v in values.values())
    assert check.details["lowrank_params"]["values"] == check.details["fixed_params"]["values"]
    assert check.details["fixed_params"]["support_moved"] == 0  # a fixed support never moves
    assert 0 < check.details["unigram_bits"] < 8
