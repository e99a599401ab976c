"""The ``tokenformer`` claim check: declaration, written criterion, arms, control and wiring.

Training runs here are tiny (1 block of width 16, 2 + 2 steps, 12 stdlib files); they test the
plumbing, not the claim (that is ``formerlab claims run tokenformer``).
"""

from __future__ import annotations

import math

import pytest
import torch

import formerlab
from formerlab.claims import Inconclusive, get_check, lm_proxy, tokenformer
from formerlab.errors import ClaimError
from formerlab.registry import list_registered


@pytest.fixture
def tiny(monkeypatch):
    """The proxy shrunk to seconds: 1 block of width 16, 4 -> 16 tokens, 2 + 2 steps."""
    setup = lm_proxy.CODE_LM_PROXY
    monkeypatch.setitem(setup, "model", {**setup["model"], "max_seq_len": 32})
    task = {**setup["task"], "seq_len": 32, "eval_batches": 2, "max_files": 12}
    monkeypatch.setitem(setup, "task", task)
    train = {**setup["train"], "batch_size": 4, "schedule": {"kind": "cosine", "warmup_steps": 1}}
    monkeypatch.setitem(setup, "train", train)
    monkeypatch.setattr(tokenformer, "MODEL", {"dim": 16, "depth": 1, "num_heads": 2})
    monkeypatch.setattr(tokenformer, "SMALL_TOKENS", 4)
    monkeypatch.setattr(tokenformer, "LARGE_TOKENS", 16)
    monkeypatch.setattr(tokenformer, "STEPS", {"quick": (2, 2), "full": (2, 2)})


def _scripted_losses(monkeypatch, grown, scratch, small_only):
    """mean_loss returns the three arms' losses in the order _compare scores them."""
    values = iter([grown, scratch, small_only])
    monkeypatch.setattr(lm_proxy, "mean_loss", lambda task, model, batches: next(values))


def test_registered_with_complete_declaration():
    assert "tokenformer" in list_registered("claim")
    check = get_check("tokenformer")
    assert isinstance(check, tokenformer.TokenFormerClaim)
    assert check.arxiv == "2410.23168" and check.year == 2025
    assert len(check.seeds_for("full")) == 3 and check.seeds_for("quick") == [0]
    assert "0.03" in check.criterion and "float64" in check.criterion
    assert check.missing


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.03, True), (-0.2, True), (0.0301, False), (math.inf, False), (math.nan, False)],
)
def test_passes_is_the_written_criterion(value, expected):
    assert get_check("tokenformer").passes(value) is expected
    assert tokenformer.TOLERANCE == 0.03


@pytest.mark.parametrize(("variant", "budget"), [("broken", "quick"), ("claim", "huge")])
def test_measure_rejects_bad_arguments_before_compute(variant, budget):
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("tokenformer").measure(variant, budget, 0)


def test_arms_differ_only_in_token_count_and_steps():
    small = tokenformer.arm_run(16, 70, 3)
    large = tokenformer.arm_run(128, 90, 3)
    assert small.model.linear.to_dict() == {
        "kind": "pattention",
        "tokens": 16,
        "grown_tokens": [],
        "normalization": "l2_norm_gelu",
    }
    assert large.model.linear.tokens == 128 and large.train.steps == 90
    assert (small.model.dim, small.model.depth, small.task.kind) == (64, 2, "code_lm")

    def rest(run):
        data = run.to_dict()
        data["model"].pop("linear")
        data["train"].pop("steps")
        return data

    assert rest(small) == rest(large)


def test_shifted_batches_continue_the_training_stream_only():
    class Task:
        def batch(self, split, index, batch_size):
            return (split, index, batch_size)

        def loss(self, model, batch):
            return batch

    shifted = tokenformer.ShiftedBatches(Task(), 7)
    assert shifted.batch("train", 0, 4) == ("train", 7, 4)
    assert shifted.batch("val", 2, 4) == ("val", 2, 4)
    assert shifted.loss(None, "b") == "b"


def test_control_growth_is_not_exact_and_claim_growth_is(tiny):
    run = tokenformer.arm_run(4, 2, 0)
    task = lm_proxy.load_task(run, 0)
    torch.manual_seed(0)
    model = formerlab.build_model(run.model)
    assert tokenformer.growth_delta(model, task, 12, 0.0) == 0.0
    assert tokenformer.growth_delta(model, task, 12, tokenformer.CONTROL_KEY_STD) > 1e-6


def test_tiny_end_to_end_claim_and_control(tiny, monkeypatch):
    check = get_check("tokenformer")
    try:
        value = check.measure("claim", "quick", 0)
    except Inconclusive as exc:
        value = exc.value
    assert math.isfinite(value)
    details = dict(check.details)
    assert details["growth_max_abs_delta"] == 0.0
    assert details["compute_ratio"] < 1.0
    assert all(3.0 < v < 6.5 for v in details["val_loss"].values())  # ~ln(256) = 5.55
    assert value == pytest.approx(details["val_loss"]["grown"] - details["val_loss"]["scratch"])
    monkeypatch.setattr(check, "_compare", lambda *a: pytest.fail("control trained stage 2"))
    check.details = {}
    assert check.measure("control", "quick", 0) == math.inf  # stage 1 reused, not retrained
    assert check.details["growth_max_abs_delta"] > 0 and not check.passes(math.inf)


def test_close_grown_and_useful_capacity_passes(tiny, monkeypatch):
    _scripted_losses(monkeypatch, grown=2.02, scratch=2.0, small_only=2.2)
    check = get_check("tokenformer")
    value = check.measure("claim", "quick", 0)
    assert value == pytest.approx(0.02) and check.passes(value)


def test_grown_too_far_behind_is_inconclusive_with_numbers(tiny, monkeypatch):
    _scripted_losses(monkeypatch, grown=2.1, scratch=2.0, small_only=2.3)
    with pytest.raises(Inconclusive) as info:
        get_check("tokenformer").measure("claim", "quick", 0)
    assert info.value.value == pytest.approx(0.1) and "grown 2.1000" in info.value.reason


def test_no_capacity_gain_at_this_scale_is_inconclusive(tiny, monkeypatch):
    _scripted_losses(monkeypatch, grown=2.0, scratch=2.0, small_only=2.01)
    with pytest.raises(Inconclusive, match="small-only"):
        get_check("tokenformer").measure("claim", "quick", 0)


def test_grown_run_not_cheaper_scores_infinity(tiny, monkeypatch):
    _scripted_losses(monkeypatch, grown=2.0, scratch=2.0, small_only=2.5)
    monkeypatch.setattr(tokenformer, "train_flops", lambda run, task, model=None: 1000)
    assert get_check("tokenformer").measure("claim", "quick", 0) == math.inf
