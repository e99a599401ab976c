"""The ``lowrank`` linear kind (Greenformers' Low-Rank Transformer): parameter count, the applied
matrix, the forward in float64, the initialisation scale and the config rules."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.layers.linear import LowRankConfig, LowRankLinear, make_linear
from formerlab.layers.linear.lowrank import lowrank_params, ratio_rank


def build(in_features=12, out_features=20, bias=True, **cfg) -> LowRankLinear:
    torch.manual_seed(0)
    config = LowRankConfig.from_dict({"kind": "lowrank", **cfg})
    return make_linear(config, in_features, out_features, bias=bias)


@pytest.mark.parametrize(("n_in", "n_out", "rank", "bias"), [(12, 20, 3, True), (7, 5, 2, False)])
def test_parameter_count_is_rank_times_in_plus_out(n_in, n_out, rank, bias):
    layer = build(n_in, n_out, bias, rank=rank)
    counted = sum(p.numel() for p in layer.parameters())
    expected = rank * (n_in + n_out) + (n_out if bias else 0)
    assert counted == expected == lowrank_params(n_in, n_out, rank, bias) == layer.num_parameters()
    assert layer.U.shape == (n_out, rank) and layer.V.shape == (rank, n_in)


@pytest.mark.parametrize(
    ("ratio", "n_in", "n_out", "expected"),
    [(0.5, 16, 16, 4), (0.4, 64, 64, 12), (0.4, 64, 256, 20), (0.01, 4, 4, 1), (1.0, 6, 3, 2)],
)
def test_ratio_gives_the_largest_rank_within_the_budget(ratio, n_in, n_out, expected):
    rank = ratio_rank(ratio, n_in, n_out)
    assert rank == expected
    assert rank == 1 or rank * (n_in + n_out) <= ratio * n_in * n_out
    assert (rank + 1) * (n_in + n_out) > ratio * n_in * n_out
    assert build(n_in, n_out, ratio=ratio).rank == expected


def test_effective_weight_is_u_times_v_and_forward_matches_it_in_float64():
    layer = build(rank=4).double()
    torch.testing.assert_close(layer.effective_weight(), layer.U @ layer.V, rtol=0, atol=0)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    expected = x @ layer.effective_weight().T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-13, atol=1e-13)


def test_forward_never_forms_the_dense_matrix(monkeypatch):
    layer = build(rank=4)
    monkeypatch.setattr(LowRankLinear, "effective_weight", lambda self: pytest.fail("formed W"))
    assert layer(torch.randn(2, 12)).shape == (2, 20)


def test_init_normal_gives_the_product_the_requested_std():
    torch.manual_seed(1)
    layer = make_linear(LowRankConfig(rank=16), 256, 256, bias=True)
    for std in (0.02, 0.5):
        layer.init_normal_(std)
        measured = layer.effective_weight().std().item()
        assert measured == pytest.approx(std, rel=0.05)
        assert layer.U.std().item() == pytest.approx(layer.V.std().item(), rel=0.05)
        assert not layer.bias.any()


def test_model_init_reaches_the_factors():
    model = fl.build_model(
        dict(
            kind="decoder_lm",
            vocab_size=32,
            dim=64,
            depth=2,
            num_heads=2,
            max_seq_len=8,
            linear={"kind": "lowrank", "rank": 16},
        )
    )
    fc1 = model.transformer.blocks[0].ffn.fc1
    assert isinstance(fc1, LowRankLinear)
    assert fc1.effective_weight().std().item() == pytest.approx(0.02, rel=0.1)


def test_gradients_reach_both_factors():
    layer = build(rank=3)
    layer(torch.randn(4, 12)).pow(2).sum().backward()
    assert layer.U.grad.abs().sum() > 0 and layer.V.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"rank": 0}, "lowrank.rank"),
        ({"rank": 4, "ratio": 0.3}, "lowrank.ratio"),
        ({"ratio": 0.0}, "lowrank.ratio"),
        ({"ratio": 1.5}, "lowrank.ratio"),
    ],
)
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(fl.ConfigError, match=field):
        LowRankConfig.from_dict({"kind": "lowrank", **cfg}, "lowrank")


def test_ratio_is_a_weight_fraction():
    layer = build(64, 64, bias=False, ratio=0.4)
    assert layer.num_parameters() <= 0.4 * 64 * 64
    assert math.isclose(layer.rank, 12)
