"""The ``matformer`` claim check: registration, the written criterion, the three trained models and
the control's construction, at tiny size (2 steps on a few files). The real quick run is slow."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
import formerlab.train.trainer as trainer_module
from formerlab.claims import Inconclusive, get_check, run_claim
from formerlab.claims import matformer as mc
from formerlab.errors import ClaimError
from formerlab.layers.ffn.matformer import nested_ffns
from formerlab.registry import list_registered

TINY_TASK = {"kind": "code_lm", "seq_len": 16, "eval_batches": 2, "max_files": 6}
TINY_MODEL = {**mc.SETUP["model"], "max_seq_len": 16}


def test_registered_with_complete_declaration() -> None:
    assert "matformer" in list_registered("claim")
    check = get_check("matformer")
    check.check_declaration()
    assert check.arxiv == "2310.07707" and check.year == 2023
    assert len(check.seeds_for("full")) == 3
    assert set(check.seeds_for("quick")) <= set(check.seeds_for("full"))
    assert "0.05" in check.criterion and "truncation" in check.criterion
    assert "2.6B" in check.paper_value and check.missing


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.05, True), (0.0, True), (-0.2, True), (0.0501, False), (1.0, False), (math.nan, False)],
)
def test_passes_is_the_written_criterion(value, expected) -> None:
    assert get_check("matformer").passes(value) is expected
    assert mc.TOLERANCE == 0.05


@pytest.mark.parametrize(("variant", "budget"), [("broken", "quick"), ("claim", "huge")])
def test_measure_rejects_bad_arguments_before_compute(variant, budget) -> None:
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("matformer").measure(variant, budget, 0)


def test_the_three_models_share_everything_but_the_ffn() -> None:
    runs = {name: mc.make_run(ffn, 70, 2) for name, ffn in mc.ffn_variants().items()}
    assert {r.train.steps for r in runs.values()} == {70} and runs["full"].train.seed == 2
    widths = {}
    for name, run in runs.items():
        torch.manual_seed(0)
        widths[name] = fl.build_model(run.model).transformer.blocks[0].ffn.fc2.in_features
        assert run.model.replace(ffn=mc.FULL_FFN) == runs["full"].model
    assert widths == {"nested": 256, "full": 256, "small": 64}
    assert runs["nested"].model.ffn.granularities == [0.25, 1.0]
    assert runs["nested"].model.ffn.mode == "sum"
    torch.manual_seed(0)
    a = fl.build_model(runs["nested"].model).state_dict()
    torch.manual_seed(0)
    b = fl.build_model(runs["full"].model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)  # nested and full start from the same weights


def test_control_is_the_naive_truncation_of_the_full_model() -> None:
    torch.manual_seed(0)
    full = fl.build_model({**TINY_MODEL, "ffn": mc.FULL_FFN}).double().eval()
    control = mc.truncated(full)
    assert nested_ffns(control)[0].config.granularities == mc.GRANULARITIES
    cut = fl.transform(control, {"kind": "matformer_extract", "fraction": 0.25})
    ffn, ref = cut.transformer.blocks[1].ffn, full.transformer.blocks[1].ffn
    assert torch.equal(ffn.fc1.weight, ref.fc1.weight[:64])
    assert torch.equal(ffn.fc2.weight, ref.fc2.weight[:, :64])
    same = fl.transform(control, {"kind": "matformer_extract", "fraction": 1.0})
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(same(ids), full(ids), rtol=0, atol=1e-12)


@pytest.fixture
def tiny(monkeypatch):
    """Tiny data and 2 steps; records every trained run and the passes the nested one took."""
    monkeypatch.setitem(mc.SETUP, "task", TINY_TASK)
    monkeypatch.setitem(mc.SETUP, "model", TINY_MODEL)
    train = {
        **mc.SETUP["train"],
        "batch_size": 4,
        "schedule": {"kind": "cosine", "warmup_steps": 1},
    }
    monkeypatch.setitem(mc.SETUP, "train", train)
    monkeypatch.setattr(mc, "STEPS", {"quick": 2, "full": 2})
    trained, passes = [], []
    real_train, real_passes = mc.train_model, trainer_module.training_passes

    def train(run, task):
        small = getattr(run.model.ffn, "mult", None) == 1
        trained.append(run.model.ffn.kind + ("-small" if small else ""))
        return real_train(run, task)

    def spy(model, step, seed):
        out = real_passes(model, step, seed)
        passes.append(len(out))
        return out

    monkeypatch.setattr(mc, "train_model", train)
    monkeypatch.setattr(trainer_module, "training_passes", spy)
    return trained, passes


def test_claim_and_control_train_three_models_once(tiny) -> None:
    trained, passes = tiny
    check = get_check("matformer")
    try:
        claim = check.measure("claim", "quick", 0)
    except Inconclusive as exc:  # 2 steps prove nothing; the numbers are kept
        claim = exc.value
        assert "extracted" in exc.reason and "separate" in exc.reason
    control = check.measure("control", "quick", 0)
    assert math.isfinite(claim) and math.isfinite(control)
    assert sorted(trained) == ["matformer", "mlp", "mlp-small"]
    assert passes == [1, 1, 1, 1, 2, 2]  # full, small: one pass a step; nested (sum mode): two
    assert check.measure("control", "quick", 0) == control  # deterministic, nothing retrained
    assert len(trained) == 3


def untrained(run, task):
    return fl.build_model(run.model).eval()


def test_claim_above_tolerance_is_inconclusive_with_the_numbers(tiny, monkeypatch) -> None:
    monkeypatch.setattr(mc, "train_model", untrained)
    losses = iter([3.0, 2.5, 2.0, 2.0])  # (extracted, separate) for widths 0.25 and 1.0
    monkeypatch.setattr(mc, "val_loss", lambda *args: next(losses))
    with pytest.raises(Inconclusive) as info:
        get_check("matformer").measure("claim", "quick", 0)
    assert info.value.value == pytest.approx(0.5)
    assert "width 0.25: extracted 3.0000 vs separate 2.5000" in info.value.reason


def test_measure_returns_the_worst_excess(tiny, monkeypatch) -> None:
    monkeypatch.setattr(mc, "train_model", untrained)
    losses = iter([2.52, 2.5, 2.01, 2.0, 9.0, 2.5, 2.0, 2.0])
    monkeypatch.setattr(mc, "val_loss", lambda *args: next(losses))
    check = get_check("matformer")
    assert check.measure("claim", "quick", 0) == pytest.approx(0.02)
    assert check.measure("control", "quick", 0) == pytest.approx(6.5)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path) -> None:
    result = run_claim("matformer", "quick", tmp_path)
    assert (tmp_path / "matformer.json").is_file()
    assert result["control_passed"] is False
    assert result["status"] in ("pass", "fail", "inconclusive")
