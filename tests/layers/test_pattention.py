"""The ``pattention`` linear kind (TokenFormer): shapes, the formula against a float64 reference for
both normalisations, the fixed scale, the zero-row guard, init, bias, and its config."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.layers.linear import ConcatLinear, Pattention, PattentionConfig, make_linear
from formerlab.layers.linear.pattention import EPS


def _layer(in_features=6, out_features=5, bias=False, **cfg) -> Pattention:
    layer = make_linear(PattentionConfig(**cfg), in_features, out_features, bias=bias).double()
    with torch.no_grad():  # larger keys than the init: scores of order 1, GeLU far from linear
        layer.key_tokens.normal_(0.0, 0.7)
        layer.value_tokens.normal_(0.0, 1.0)
    return layer


def reference(x, keys, values, tau, normalization):
    """Hand-written Pattention in float64, one row at a time."""
    out = torch.empty(x.shape[0], values.shape[1], dtype=torch.float64)
    for i in range(x.shape[0]):
        s = torch.tensor([float(x[i] @ k) for k in keys], dtype=torch.float64)
        if normalization == "l2_norm_gelu":
            theta = torch.nn.functional.gelu(s * tau / math.sqrt(float((s * s).sum())))
        else:
            g = torch.nn.functional.gelu(s)
            theta = g * tau / math.sqrt(float((g * g).sum()))
        out[i] = theta @ values
    return out


@pytest.mark.parametrize("normalization", ["l2_norm_gelu", "gelu_l2_norm"])
def test_matches_the_formula_in_float64(normalization) -> None:
    torch.manual_seed(0)
    layer = _layer(tokens=7, normalization=normalization)
    x = torch.randn(9, 6, dtype=torch.float64)
    expected = reference(
        x, layer.key_tokens.detach(), layer.value_tokens.detach(), 7**0.5, normalization
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_the_two_normalisations_differ() -> None:
    torch.manual_seed(1)
    a = _layer(tokens=7)
    b = _layer(tokens=7, normalization="gelu_l2_norm")
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 6, dtype=torch.float64)
    assert (a(x) - b(x)).abs().max() > 1e-3


def test_shapes_default_tokens_and_no_fusing() -> None:
    layer = make_linear(PattentionConfig(), 8, 32, bias=False)
    assert layer.num_tokens == 32  # max(in, out)
    assert layer.key_tokens.shape == (32, 8) and layer.value_tokens.shape == (32, 32)
    assert layer.tau == pytest.approx(math.sqrt(32)) and layer.bias is None
    assert layer(torch.randn(2, 3, 8)).shape == (2, 3, 32)
    assert make_linear(PattentionConfig(tokens=5), 8, 2, bias=False).num_tokens == 5
    model = fl.build_model(
        {
            "kind": "decoder_lm",
            "vocab_size": 11,
            "dim": 8,
            "depth": 1,
            "num_heads": 2,
            "max_seq_len": 4,
            "linear": {"kind": "pattention", "tokens": 3},
        }
    )
    qkv = model.transformer.blocks[0].attn.qkv_proj
    assert isinstance(qkv, ConcatLinear) and all(isinstance(p, Pattention) for p in qkv.parts)


def test_scale_comes_from_tokens_not_from_grown_tokens() -> None:
    layer = _layer(tokens=4, grown_tokens=[3, 2])
    assert layer.num_tokens == 9 and layer.segments == (4, 3, 2)
    assert layer.tau == 2.0
    x = torch.randn(5, 6, dtype=torch.float64)
    keys, values = layer.key_tokens.detach(), layer.value_tokens.detach()
    torch.testing.assert_close(
        layer(x), reference(x, keys, values, 2.0, "l2_norm_gelu"), rtol=1e-12, atol=1e-12
    )


def test_zero_input_rows_give_zero_output_and_finite_gradients() -> None:
    layer = _layer(tokens=4, bias=True)
    x = torch.randn(3, 6, dtype=torch.float64)
    x[1] = 0.0
    x.requires_grad_(True)
    out = layer(x)
    assert torch.equal(out[1], layer.bias.detach())  # Θ(0) = 0: only the bias is left
    out.sum().backward()
    grads = [x.grad, layer.key_tokens.grad, layer.value_tokens.grad, layer.bias.grad]
    assert all(torch.isfinite(g).all() for g in grads) and layer.key_tokens.grad.abs().sum() > 0
    assert EPS > 0


def test_init_normal_draws_keys_and_values_with_std_and_zero_bias() -> None:
    torch.manual_seed(2)
    layer = make_linear(PattentionConfig(tokens=400), 300, 200, bias=True)
    with torch.no_grad():
        layer.bias.fill_(1.0)
    layer.init_normal_(0.05)
    assert layer.key_tokens.std().item() == pytest.approx(0.05, rel=0.02)
    assert layer.value_tokens.std().item() == pytest.approx(0.05, rel=0.02)
    assert not layer.bias.detach().any()
    model = fl.build_model(
        {
            "kind": "decoder_lm",
            "vocab_size": 11,
            "dim": 64,
            "depth": 2,
            "num_heads": 2,
            "max_seq_len": 4,
            "linear": {"kind": "pattention"},
        }
    )
    fc2 = model.transformer.blocks[0].ffn.fc2  # residual output: GPT-2's scaled std
    assert fc2.value_tokens.std().item() == pytest.approx(0.02 / 2, rel=0.05)


def test_has_no_effective_weight() -> None:
    assert not hasattr(make_linear(PattentionConfig(), 4, 4, bias=False), "effective_weight")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"tokens": 0}, "linear.tokens"),
        ({"grown_tokens": [4, 0]}, r"linear.grown_tokens\[1\]"),
        ({"normalization": "softmax"}, "linear.normalization"),
    ],
)
def test_bad_config_names_the_field(data, field) -> None:
    with pytest.raises(fl.ConfigError, match=field):
        PattentionConfig.from_dict({"kind": "pattention", **data}, "linear")


def test_config_round_trip_with_growth() -> None:
    d = {"kind": "pattention", "tokens": 8, "grown_tokens": [4, 2], "normalization": "gelu_l2_norm"}
    assert PattentionConfig.from_dict(d).to_dict() == d
