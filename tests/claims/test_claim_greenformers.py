"""The ``greenformers`` claim check: the analytic MAC model and crossover (exact, against torch's
FLOP counter), the written criterion, the arms and the wiring at tiny size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import formerlab as fl
from formerlab.claims import get_check, greenformers, wide_attention
from formerlab.errors import ClaimError
from formerlab.registry import list_registered


def test_registered_with_complete_declaration():
    assert "greenformers" in list_registered("claim")
    check = get_check("greenformers")
    assert check.arxiv == "2108.10808" and check.missing
    assert "0.6" in check.criterion and "2 points" in check.criterion


@pytest.mark.parametrize(
    ("value", "expected"), [(0.0, True), (1.0, True), (-0.1, False), (math.nan, False)]
)
def test_passes_is_the_written_criterion(value, expected):
    assert get_check("greenformers").passes(value) is expected


@pytest.mark.parametrize(("d", "r", "k"), [(256, 64, 64), (64, 16, 32), (128, 8, 256)])
def test_crossover_is_exact_and_separates_the_orderings(d, r, k):
    n_star = greenformers.crossover(d, 4, r, k)
    assert n_star == pytest.approx(6 * d + 2 * k - 9 * r, abs=1e-9)

    def total(n, **kw):
        return sum(greenformers.layer_macs(n, d, 4, **kw).values())

    below, above = math.floor(n_star) - 1, math.ceil(n_star) + 1
    if below >= 1:
        assert total(below, rank=r) < total(below, k=k)
    assert total(above, rank=r) > total(above, k=k)


@pytest.mark.parametrize("rank", [None, 3])
def test_projection_macs_match_torch_flop_counter(rank):
    """The formula's projection MACs are what the built layer actually computes (2 FLOPs a MAC)."""
    d, n = 16, 12
    model = fl.build_model(
        {"kind": "encoder", "vocab_size": 10, "dim": d, "depth": 1, "num_heads": 2,
         "max_seq_len": n, "head": {"kind": "none"},
         "linear": {"kind": "lowrank", "rank": rank} if rank else {"kind": "dense"}}
    )  # fmt: skip
    block = model.transformer.blocks[0]
    x = torch.randn(1, n, d)
    with FlopCounterMode(display=False) as counter:
        block.attn.qkv_proj(x)
        block.attn.out_proj(x)
        block.ffn(x)
    expected = greenformers.layer_macs(n, d, 4, rank=rank)["projections"]
    assert counter.get_total_flops() == 2 * expected


def test_claim_arm_keeps_at_most_60_percent_of_the_linear_weights_and_control_is_rank_1():
    dense = fl.build_model(greenformers.accuracy_run(None, 100, 0).model)
    lrt = fl.build_model(greenformers.accuracy_run(greenformers.RANKS["claim"], 100, 0).model)
    d, r = 64, 16
    per_block = 4 * r * 2 * d + 2 * r * (d + 4 * d)  # q, k, v, out, fc1, fc2
    assert greenformers.linear_weights(lrt) == 2 * per_block
    assert greenformers.linear_weights(dense) == 2 * (4 * d * d + 2 * 4 * d * d)
    assert greenformers.linear_weights(lrt) / greenformers.linear_weights(dense) <= 0.6
    assert greenformers.RANKS["control"] == 1
    # the classifier head and embeddings stay dense
    assert isinstance(lrt.head.proj, torch.nn.Linear)


def test_speed_models_differ_only_in_the_technique():
    lrt, lin = (greenformers.speed_model(k) for k in ("lrt", "linformer"))
    assert lrt["linear"] == {"kind": "lowrank", "rank": 64} and "linear" not in lin
    assert lin["attention"] == {"kind": "linformer", "k": 64}
    assert {k: v for k, v in lrt.items() if k not in ("linear", "attention")} == {
        k: v for k, v in lin.items() if k != "attention"
    }


def test_bad_variant_or_budget_is_rejected_before_compute():
    with pytest.raises(ClaimError, match="allowed variants"):
        get_check("greenformers").measure("both", "quick", 0)


def test_measure_shares_latencies_and_the_dense_arm(monkeypatch, tmp_path: Path):
    for package, topic, word in (
        ("fortunes", "alpha", "apples"),
        ("fortunes-min", "beta", "bricks"),
    ):
        (tmp_path / package).mkdir()
        texts = [f"{word} {i} {word}" for i in range(40)]
        (tmp_path / package / topic).write_text("\n%\n".join(texts) + "\n%\n")
    task = {**wide_attention.TASK_CONFIG, "root": str(tmp_path), "min_examples_per_class": 1,
            "seq_len": 32, "train_size": 40, "val_size": 20, "test_size": 20, "eval_batches": 2}  # fmt: skip
    monkeypatch.setattr(greenformers, "TASK_CONFIG", task)
    monkeypatch.setattr(greenformers, "NUM_TOPICS", 2)
    monkeypatch.setattr(greenformers, "STEPS", {"quick": 2, "full": 2})
    monkeypatch.setattr(greenformers, "TRAIN_CONFIG", {**greenformers.TRAIN_CONFIG, "batch_size": 4,
                        "schedule": {"kind": "constant"}})  # fmt: skip
    monkeypatch.setattr(greenformers, "SPEED", {**greenformers.SPEED, "dim": 16, "depth": 1,
                        "num_heads": 2, "rank": 4, "k": 8})  # fmt: skip
    monkeypatch.setattr(greenformers, "SHORT", 8)
    monkeypatch.setattr(greenformers, "LONG", 32)
    monkeypatch.setattr(greenformers, "LATENCY_RUNS", 1)
    check = get_check("greenformers")
    value = check.measure("claim", "quick", 0)
    claim = dict(check.details)
    control = check.measure("control", "quick", 0)
    assert len(check._times) == 1 and len(check._arms) == 3  # dense, rank 16, rank 1
    assert claim["rank"] == 16 and check.details["rank"] == 1
    assert claim["dense_accuracy"] == check.details["dense_accuracy"]
    assert claim["latency_ms"] == check.details["latency_ms"]
    assert value == pytest.approx(min(claim["margins"].values()))
    assert control == pytest.approx(min(check.details["margins"].values()))
