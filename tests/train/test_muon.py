"""Muon: which parameters it takes, that its updates are orthogonalized, config errors, schedules
reaching both parts and exact resume through the trainer."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from trainer_testkit import tiny_run

import formerlab as fl
from formerlab.train import trainer as tr
from formerlab.train.config import TrainConfig
from formerlab.train.muon import CombinedOptimizer, MuonConfig, muon_split
from formerlab.train.optim import _fast_path, build_optimizer

MUON = {"kind": "muon", "lr": 0.02, "adamw": {"kind": "adamw", "lr": 3e-3}}


def _decoder(**over) -> nn.Module:
    cfg = dict(kind="decoder_lm", vocab_size=32, dim=16, depth=2, num_heads=2, max_seq_len=8)
    return fl.build_model({**cfg, **over})


def _groups(opt: CombinedOptimizer) -> dict[str, set[int]]:
    return {
        name: {id(p) for g in part.param_groups for p in g["params"]}
        for name, part in opt.parts.items()
    }


def test_hidden_matrices_go_to_muon_everything_else_to_adamw_once() -> None:
    model = _decoder(tie_embeddings=False)
    opt = build_optimizer(MuonConfig(), model)
    named = dict(model.named_parameters())
    groups = _groups(opt)
    muon_names = {n for n, p in named.items() if id(p) in groups["muon"]}
    assert muon_names == {
        f"transformer.blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.qkv_proj", "attn.out_proj", "ffn.fc1", "ffn.fc2")
    }
    # every trainable parameter lands in exactly one group of one part
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    # AdamW keeps its own rules: decay on >= 2-D (embeddings, lm_head), none on biases and gains
    for group in opt.parts["adamw"].param_groups:
        assert all((p.ndim >= 2) == (group["weight_decay"] > 0) for p in group["params"])
    assert id(named["lm_head.weight"]) in groups["adamw"]
    assert id(named["transformer.embed.weight"]) in groups["adamw"]


def test_classifier_heads_and_custom_patterns_are_excluded() -> None:
    enc = fl.build_model(
        dict(
            kind="encoder",
            vocab_size=32,
            dim=16,
            depth=1,
            num_heads=2,
            max_seq_len=8,
            head={"kind": "classifier", "num_classes": 3},
        )
    )
    hidden, rest = muon_split(enc, MuonConfig().exclude)
    assert "head.proj.weight" in rest and "transformer.position.embedding.weight" in rest
    hidden, _ = muon_split(enc, ["*embed*", "head.*", "*.ffn.*"])
    assert hidden == [
        "transformer.blocks.0.attn.qkv_proj.weight",
        "transformer.blocks.0.attn.out_proj.weight",
    ]


def test_frozen_parameters_are_left_out_and_an_all_frozen_model_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = build_optimizer(MuonConfig(), model)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(model[1].weight), id(model[1].bias)}
    with pytest.raises(fl.ConfigError, match="no trainable parameters"):
        build_optimizer(MuonConfig(), model.requires_grad_(False))


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_a_matrix_update_is_approximately_orthogonal(shape: tuple[int, int]) -> None:
    """Without momentum or decay, ΔW / (lr · sqrt(max(1, out/in))) is torch's NS-5 orthogonalization
    of the gradient. Keller Jordan's quintic coefficients trade exactness for speed: they send every
    singular value within a 20x spread of the largest to roughly 0.68..1.2 (docstring of torch's
    Muon: "S' ~ Uniform(0.5, 1.5)"), so [0.5, 1.5] is the documented band. (A near-zero singular
    value, as in a square Gaussian matrix, is not lifted by 5 steps.) The raw gradient's spread is
    20x, so a missing orthogonalization fails."""
    torch.manual_seed(0)
    layer = nn.Linear(shape[1], shape[0], bias=False)
    cfg = MuonConfig(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    opt = build_optimizer(cfg, layer)
    k = min(shape)
    u = torch.linalg.qr(torch.randn(shape[0], k))[0]
    v = torch.linalg.qr(torch.randn(shape[1], k))[0]
    grad = u @ torch.diag(torch.logspace(-1.3, 0.0, k)) @ v.T  # singular values 0.05 .. 1
    layer.weight.grad = grad.clone()
    before = layer.weight.detach().clone()
    opt.step()
    step = (before - layer.weight.detach()) / (0.1 * math.sqrt(max(1.0, shape[0] / shape[1])))
    s = torch.linalg.svdvals(step)
    assert float(s.min()) >= 0.5 and float(s.max()) <= 1.5
    g = torch.linalg.svdvals(grad)
    assert float(g.max() / g.min()) > 5.0  # the gradient itself is far from orthogonal


def test_matches_torch_muon_and_adamw_with_the_same_hyperparameters() -> None:
    torch.manual_seed(0)
    ours = _decoder()
    ref = _decoder()
    ref.load_state_dict(ours.state_dict())
    cfg = MuonConfig.from_dict(
        {"lr": 0.05, "momentum": 0.9, "nesterov": False, "ns_steps": 3, "weight_decay": 0.1,
         "adjust_lr_fn": "match_rms_adamw", "adamw": {"lr": 0.01, "weight_decay": 0.2}}
    )  # fmt: skip
    opt = build_optimizer(cfg, ours)
    hidden, _ = muon_split(ref, cfg.exclude)
    named = dict(ref.named_parameters())
    ref_muon = torch.optim.Muon(
        [named[n] for n in hidden], lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=False,
        ns_steps=3, adjust_lr_fn="match_rms_adamw",
    )  # fmt: skip
    rest = [p for n, p in named.items() if n not in hidden]
    ref_adamw = torch.optim.AdamW(
        [{"params": [p for p in rest if p.ndim >= 2], "weight_decay": 0.2},
         {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}],
        lr=0.01, betas=(0.9, 0.95), eps=1e-8, **_fast_path(rest),
    )  # fmt: skip
    # the same AdamW kernel as ours (fused on CPU): a last-bit difference in the AdamW part changes
    # the next gradients, and Muon's bfloat16 Newton-Schulz can turn that into a 1e-4 difference
    ids = torch.randint(0, 32, (2, 8))
    for _ in range(3):
        for model, opts in ((ours, [opt]), (ref, [ref_muon, ref_adamw])):
            model(ids).square().mean().backward()
            for o in opts:
                o.step()
                o.zero_grad()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("ns_steps", 0),
        ("weight_decay", -1.0),
        ("adjust_lr_fn", "sqrt"),
        ("exclude", [""]),
    ],
)
def test_invalid_hyperparameters_name_the_field(field: str, value: object) -> None:
    with pytest.raises(fl.ConfigError, match=rf"train\.optimizer\.{field}: invalid value"):
        TrainConfig.from_dict({"optimizer": {"kind": "muon", field: value}}, "train")


def test_nested_optimizer_must_be_adamw() -> None:
    with pytest.raises(fl.ConfigError, match=r"train\.optimizer\.adamw"):
        TrainConfig.from_dict({"optimizer": {"kind": "muon", "adamw": {"kind": "muon"}}}, "train")
    with pytest.raises(fl.ConfigError, match=r"train\.optimizer\.adamw\.lr: invalid value"):
        TrainConfig.from_dict({"optimizer": {"kind": "muon", "adamw": {"lr": -1}}}, "train")


def test_schedule_scales_both_parts_from_their_own_peaks(tmp_path: Path) -> None:
    run = fl.load_config(tiny_run(optimizer=MUON))
    task, model = tr._build(run, tmp_path)
    t = tr.Trainer(run, tmp_path, task, model)
    assert set(t.optimizer.parts) == {"muon", "adamw"}
    for step0 in (0, 1, 5, 11):
        t.set_lr(step0)
        factor = t.schedule.factor(step0)
        assert all(g["lr"] == 0.02 * factor for g in t.optimizer.parts["muon"].param_groups)
        assert all(g["lr"] == 3e-3 * factor for g in t.optimizer.parts["adamw"].param_groups)


def test_resume_is_exact(tmp_path: Path) -> None:
    """4 steps in one go == 2 steps, a stop, and 2 resumed steps (checkpointed Muon momentum and
    AdamW moments): every logged metric identical."""
    run = tiny_run(optimizer=MUON, steps=4, checkpoint_every=2, eval_every=2, log_every=1)
    data = {**run, "model": {**run["model"], "dropout": 0.0}}
    full = tmp_path / "full"
    tr.train(data, full, progress=False)
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_4")
    summary = tr.train(data, cut, resume=True, progress=False)
    assert summary["resumed_from"] == str(cut / "checkpoints" / "step_2")
    timing = set(tr.TIMING_FIELDS)
    logs = [
        [
            {k: v for k, v in r.items() if k not in timing}
            for r in tr.read_metrics(d / "metrics.jsonl")
        ]
        for d in (full, cut)
    ]
    assert logs[0] == logs[1] and len(logs[0]) >= 6


def test_loading_a_state_of_other_parts_is_refused() -> None:
    model = _decoder()
    opt = build_optimizer(MuonConfig(), model)
    with pytest.raises(fl.CheckpointError, match=r"parts \['adamw'\]; this optimizer has"):
        opt.load_state_dict({"adamw": opt.parts["adamw"].state_dict()})
