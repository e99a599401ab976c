"""AdamW: which parameters decay, that the hyperparameters reach torch, config errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import formerlab as fl
from formerlab.train.config import TrainConfig
from formerlab.train.optim import AdamWConfig, build_optimizer, decay_split


class Tied(nn.Module):
    """Embedding tied to the output head, a biased linear, a norm and a frozen matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight
        self.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)


def test_only_matrices_decay_and_tied_weights_count_once() -> None:
    decay, no_decay = decay_split(Tied())
    assert sorted(decay) == ["embed.weight", "proj.weight"]
    assert sorted(no_decay) == ["norm.bias", "norm.weight", "proj.bias"]


def test_param_groups_of_a_decoder() -> None:
    model = fl.build_model(
        {
            "kind": "decoder_lm",
            "vocab_size": 32,
            "dim": 16,
            "depth": 2,
            "num_heads": 2,
            "max_seq_len": 16,
        }
    )
    opt = build_optimizer(AdamWConfig(weight_decay=0.05), model)
    by_wd = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert set(by_wd) == {0.05, 0.0}
    assert all(p.ndim >= 2 for p in by_wd[0.05]) and all(p.ndim < 2 for p in by_wd[0.0])
    grouped = {id(p) for ps in by_wd.values() for p in ps}
    assert grouped == {id(p) for p in model.parameters()}
    assert sum(len(ps) for ps in by_wd.values()) == len(grouped)


def test_uses_the_fused_kernel_on_cpu() -> None:
    opt = build_optimizer(AdamWConfig(), Tied())
    assert opt.defaults["fused"] is True


def test_zero_gradient_step_decays_only_matrices() -> None:
    model = Tied()
    with torch.no_grad():
        model.proj.bias.fill_(1.0)
        model.norm.weight.fill_(2.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(AdamWConfig(lr=0.1, weight_decay=0.5), model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if p.ndim >= 2 and p.requires_grad else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor)


def test_matches_reference_adamw_with_the_same_hyperparameters() -> None:
    torch.manual_seed(0)
    ours, ref = Tied(), Tied()
    ref.load_state_dict(ours.state_dict())
    cfg = AdamWConfig(lr=0.01, betas=[0.8, 0.9], eps=1e-6, weight_decay=0.2)
    opt = build_optimizer(cfg, ours)
    named = dict(ref.named_parameters())
    decay, no_decay = decay_split(ref)
    ref_opt = torch.optim.AdamW(
        [
            {"params": [named[n] for n in decay], "weight_decay": 0.2},
            {"params": [named[n] for n in no_decay], "weight_decay": 0.0},
        ],
        lr=0.01,
        betas=(0.8, 0.9),
        eps=1e-6,
        foreach=False,
    )
    ids = torch.randint(0, 10, (4, 5))
    for _ in range(3):
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            model.head(model.norm(model.proj(model.embed(ids)))).square().mean().backward()
            o.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name, rtol=1e-5, atol=1e-6)


def test_adamw_is_the_registered_default() -> None:
    assert "adamw" in fl.list_registered("optimizer")
    cfg = TrainConfig()
    assert isinstance(cfg.optimizer, AdamWConfig)
    assert cfg.optimizer.to_dict() == {
        "kind": "adamw",
        "lr": 1e-3,
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "weight_decay": 0.1,
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0),
        ("lr", -1.0),
        ("betas", [0.9]),
        ("betas", [0.9, 1.0]),
        ("eps", 0.0),
        ("weight_decay", -0.1),
    ],
)
def test_invalid_hyperparameters_name_the_field(field: str, value: object) -> None:
    with pytest.raises(fl.ConfigError, match=rf"train\.optimizer\.{field}: invalid value"):
        TrainConfig.from_dict({"optimizer": {"kind": "adamw", field: value}}, "train")


def test_a_model_without_trainable_parameters_is_refused() -> None:
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(fl.ConfigError, match="no trainable parameters"):
        build_optimizer(AdamWConfig(), model)
