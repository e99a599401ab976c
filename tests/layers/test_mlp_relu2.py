"""The squared-ReLU activation of Primer (So et al., 2021) in the ``mlp`` feed-forward."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl
from formerlab.layers.ffn.mlp import ACTIVATIONS, MLP, MLPConfig, relu2
from formerlab.layers.linear import DenseConfig


def test_relu2_is_relu_squared_in_float64() -> None:
    x = torch.randn(1000, dtype=torch.float64) * 3
    expected = torch.where(x > 0, x * x, torch.zeros_like(x))
    torch.testing.assert_close(relu2(x), expected, rtol=0, atol=0)
    assert ACTIVATIONS["relu2"] is relu2


def test_relu2_gradient_is_twice_relu() -> None:
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    relu2(x).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach().clamp(min=0), rtol=0, atol=1e-15)


def test_mlp_with_relu2_computes_fc2_of_squared_relu() -> None:
    cfg = MLPConfig.from_dict({"kind": "mlp", "mult": 2, "activation": "relu2"})
    mlp = MLP(cfg, dim=6, linear=DenseConfig()).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    hidden = x @ mlp.fc1.weight.T + mlp.fc1.bias
    expected = hidden.clamp(min=0) ** 2 @ mlp.fc2.weight.T + mlp.fc2.bias
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


def test_relu2_config_round_trips_and_builds_a_model() -> None:
    cfg = MLPConfig.from_dict({"kind": "mlp", "activation": "relu2"})
    assert MLPConfig.from_dict(cfg.to_dict()).activation == "relu2"
    model = fl.build_model(
        {
            "kind": "decoder_lm",
            "vocab_size": 11,
            "dim": 8,
            "depth": 1,
            "num_heads": 2,
            "max_seq_len": 8,
            "ffn": {"kind": "mlp", "activation": "relu2"},
        }
    )
    assert model(torch.randint(0, 11, (2, 5))).shape == (2, 5, 11)


def test_unknown_activation_names_the_field_and_relu2() -> None:
    with pytest.raises(fl.ConfigError, match=r"activation.*'relu3'.*'relu2'"):
        MLPConfig.from_dict({"kind": "mlp", "activation": "relu3"})
