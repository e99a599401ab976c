"""The ``glu`` feed-forward (Shazeer, 2020): GLU / GEGLU / SwiGLU / ReGLU against hand-written
formulas in float64, the hidden-size convention and the exact parameter count."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.layers.ffn.glu import GLU, GLUConfig, glu_params
from formerlab.layers.linear import DenseConfig


def reference_activation(name: str, z: torch.Tensor) -> torch.Tensor:
    """The four gates written from their definitions (no torch activation functions)."""
    if name == "sigmoid":
        return 1 / (1 + torch.exp(-z))
    if name == "silu":
        return z / (1 + torch.exp(-z))
    if name == "gelu":
        return 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
    return torch.where(z > 0, z, torch.zeros_like(z))


def build(dim: int = 12, **cfg) -> GLU:
    torch.manual_seed(0)
    module = GLU(GLUConfig.from_dict({"kind": "glu", **cfg}), dim=dim, linear=DenseConfig())
    return module.double()


@pytest.mark.parametrize("gate", ["sigmoid", "gelu", "silu", "relu"])
@pytest.mark.parametrize("bias", [False, True])
def test_forward_is_fc2_of_gated_product_in_float64(gate: str, bias: bool) -> None:
    glu = build(gate_activation=gate, bias=bias)
    if bias:  # non-zero biases, so a dropped bias would show
        for p in (glu.gate.bias, glu.up.bias, glu.fc2.bias):
            torch.nn.init.normal_(p)
    x = torch.randn(3, 5, 12, dtype=torch.float64)

    def affine(w, b):
        return x @ w.T + (b if b is not None else 0)

    g = affine(glu.gate.weight, glu.gate.bias)
    u = affine(glu.up.weight, glu.up.bias)
    h = reference_activation(gate, g) * u
    expected = h @ glu.fc2.weight.T + (glu.fc2.bias if bias else 0)
    torch.testing.assert_close(glu(x), expected, rtol=1e-12, atol=1e-12)


def test_gate_and_up_are_not_interchangeable() -> None:
    """act(gate) * up, not act(up) * gate: swapping the two projections changes the output."""
    glu = build(gate_activation="silu")
    x = torch.randn(4, 12, dtype=torch.float64)
    swapped = (
        torch.nn.functional.silu(x @ glu.up.weight.T) * (x @ glu.gate.weight.T) @ glu.fc2.weight.T
    )
    assert (glu(x) - swapped).abs().max() > 1e-6


@pytest.mark.parametrize(
    ("dim", "mult", "multiple_of", "hidden"),
    [
        (64, 4.0, 1, 171),  # 2/3 * 4 * 64 = 170.67 -> 171
        (64, 4.0, 8, 176),
        (64, 4.0, 256, 256),
        (48, 4.0, 1, 128),
        (30, 2.0, 1, 40),
        (3, 0.01, 1, 1),  # never zero units
    ],
)
def test_hidden_size_convention(dim: int, mult: float, multiple_of: int, hidden: int) -> None:
    cfg = GLUConfig.from_dict({"kind": "glu", "mult": mult, "multiple_of": multiple_of})
    assert cfg.hidden(dim) == hidden
    glu = GLU(cfg, dim=dim, linear=DenseConfig())
    assert glu.gate.out_features == glu.up.out_features == glu.fc2.in_features == hidden


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("dim", "mult", "multiple_of"), [(64, 4.0, 1), (48, 3.0, 16), (10, 8.0, 4)]
)
def test_parameter_count_formula_is_exact(dim, mult, multiple_of, bias) -> None:
    cfg = {"mult": mult, "multiple_of": multiple_of, "bias": bias}
    glu = build(dim, **cfg)
    hidden = GLUConfig.from_dict({"kind": "glu", **cfg}).hidden(dim)
    counted = sum(p.numel() for p in glu.parameters())
    assert counted == glu_params(dim, hidden, bias)
    assert counted == 3 * dim * hidden + (2 * hidden + dim if bias else 0)


def test_same_parameters_as_mlp_when_two_thirds_is_whole() -> None:
    """dim = 48, mult = 4: glu hidden 128, 3 * 48 * 128 == mlp's 2 * 48 * 192 (no biases)."""
    model = {"kind": "decoder_lm", "vocab_size": 11, "dim": 48, "depth": 1, "num_heads": 2}
    glu = fl.build_model({**model, "ffn": {"kind": "glu", "mult": 4}})
    mlp = fl.build_model({**model, "ffn": {"kind": "mlp", "mult": 4, "bias": False}})
    count = lambda m: sum(p.numel() for p in m.transformer.blocks[0].ffn.parameters())  # noqa: E731
    assert count(glu) == count(mlp) == 2 * 48 * 192


def test_fc2_gets_the_scaled_residual_init() -> None:
    glu = build()
    assert getattr(glu.fc2, "residual_out", False)
    assert not getattr(glu.gate, "residual_out", False)
    assert not getattr(glu.up, "residual_out", False)


def test_dropout_only_in_training() -> None:
    glu = build(dropout=0.5)
    x = torch.randn(8, 12, dtype=torch.float64)
    glu.eval()
    torch.testing.assert_close(glu(x), glu(x), rtol=0, atol=0)
    plain = build(dropout=0.0).eval()
    torch.testing.assert_close(glu(x), plain(x), rtol=0, atol=0)  # same seed, same weights
    glu.train()
    assert (glu(x) - plain(x)).abs().max() > 0


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("mult", 0, r"model\.ffn\.mult: 0\.0 must be > 0"),
        ("multiple_of", 0, r"model\.ffn\.multiple_of: 0 must be >= 1"),
        ("dropout", 1.0, r"model\.ffn\.dropout: 1\.0; allowed: 0 <= p < 1"),
        (
            "gate_activation",
            "tanh",
            r"model\.ffn\.gate_activation.*'tanh'.*'sigmoid' \| 'gelu' \| 'silu'",
        ),
    ],
)
def test_bad_config_names_the_field(field, value, match) -> None:
    with pytest.raises(fl.ConfigError, match=match):
        fl.load_config(
            {"model": {"kind": "decoder_lm", "ffn": {"kind": "glu", field: value}}, "task": "copy"}
        )


def test_declares_stream_ports_so_norm_conversions_stay_exact() -> None:
    """gate and up read the residual stream, fc2 writes it: Pre-LN -> Pre-CRMSNorm is exact."""
    torch.manual_seed(0)
    cfg = {"kind": "decoder_lm", "vocab_size": 23, "dim": 16, "depth": 2, "num_heads": 2}
    model = fl.build_model({**cfg, "ffn": {"kind": "glu", "bias": True}}).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_()  # a non-trivial LayerNorm gain and bias to fold
    converted = fl.transform(model, {"kind": "pre_ln_to_crmsnorm"})
    ids = torch.randint(0, 23, (2, 9))
    torch.testing.assert_close(converted(ids), model(ids), rtol=0, atol=1e-12)
