"""The certified Lipschitz bound: it holds for every sampled pair (random and adversarial), it is
attained on one-layer cases, the activation constants are right, and unbounded parts are refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import formerlab as fl
from formerlab.layers.linear import LipschitzConfig, LipschitzLinear
from formerlab.lipschitz_bound import (
    GELU_LIPSCHITZ,
    SILU_LIPSCHITZ,
    Residual,
    lipschitz_bound,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: 1 thread is fastest


def _capped(inp: int, out: int, cap: float) -> LipschitzLinear:
    layer = LipschitzLinear(LipschitzConfig(max_norm=cap), in_features=inp, out_features=out)
    layer.init_normal_(1.0)  # far outside the ball: projected onto its surface, sigma = cap
    return layer


def _residual_mlp(cap: float = 1.0, depth: int = 2, act: nn.Module | None = None) -> nn.Module:
    blocks = [
        Residual(nn.Sequential(_capped(16, 32, cap), act or nn.GELU(), _capped(32, 16, cap)))
        for _ in range(depth)
    ]
    return nn.Sequential(_capped(8, 16, cap), *blocks, _capped(16, 5, cap)).double().eval()


def _ratios(f: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (f(x) - f(y)).norm(dim=-1) / (x - y).norm(dim=-1)


def test_bound_holds_for_ten_thousand_random_pairs() -> None:
    torch.manual_seed(0)
    f = _residual_mlp(cap=1.5)
    bound = lipschitz_bound(f)
    assert bound == pytest.approx(1.5**2 * (1 + 1.5**2 * GELU_LIPSCHITZ) ** 2, rel=1e-5)
    x = torch.randn(10_000, 8, dtype=torch.float64) * 3
    far = torch.randn_like(x) * 3
    near = x + 1e-4 * torch.randn_like(x)  # close pairs probe the local slope (the Jacobian)
    for y in (far, near):
        assert float(_ratios(f, x, y).max()) <= bound


def test_bound_holds_against_gradient_ascent_on_the_ratio() -> None:
    """Pairs pushed by 100 Adam steps to maximise ||f(x) - f(y)|| / ||x - y||: still below."""
    torch.manual_seed(1)
    f = _residual_mlp(cap=1.0, act=nn.ReLU()).requires_grad_(False)
    x = torch.randn(256, 8, dtype=torch.float64, requires_grad=True)
    y = (x.detach() + 0.1 * torch.randn_like(x)).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.05)
    for _ in range(100):
        ratio = (f(x) - f(y)).norm(dim=-1) / (x - y).norm(dim=-1)
        (-ratio.sum()).backward()
        opt.step()
        opt.zero_grad()
    assert float(_ratios(f, x.detach(), y.detach()).max()) <= lipschitz_bound(f)


def test_one_linear_layer_attains_its_bound() -> None:
    torch.manual_seed(2)
    layer = _capped(10, 6, 0.7).double()
    bound = lipschitz_bound(layer)
    assert bound == pytest.approx(0.7, rel=1e-6) and bound <= 0.7 * (1 + 1e-6)
    v = torch.linalg.svd(layer.weight.detach())[2][0]  # top right singular vector
    x = torch.randn(10, dtype=torch.float64)
    assert float(_ratios(layer, x, x + v)) == pytest.approx(bound, rel=1e-12)


def test_a_residual_relu_mlp_attains_its_bound() -> None:
    """x + fc2(relu(fc1 x)) with fc1 = a I, fc2 = b I: on the positive orthant the map is
    (1 + a b) x, so the bound 1 + a b is the true constant."""
    a, b = 0.8, 0.5
    fc1, fc2 = (nn.Linear(4, 4, bias=False, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        fc1.weight.copy_(a * torch.eye(4, dtype=torch.float64))
        fc2.weight.copy_(b * torch.eye(4, dtype=torch.float64))
    f = Residual(nn.Sequential(fc1, nn.ReLU(), fc2))
    bound = lipschitz_bound(f)
    assert bound == pytest.approx(1 + a * b, rel=1e-12)
    x = torch.full((4,), 1.0, dtype=torch.float64)
    assert float(_ratios(f, x, 2 * x)) == pytest.approx(bound, rel=1e-12)


def test_activation_constants_are_the_sup_of_the_derivative() -> None:
    x = torch.linspace(-8, 8, 400_001, dtype=torch.float64, requires_grad=True)
    for fn, const in ((nn.functional.gelu, GELU_LIPSCHITZ), (nn.functional.silu, SILU_LIPSCHITZ)):
        (grad,) = torch.autograd.grad(fn(x).sum(), x)
        peak = float(grad.abs().max())
        assert peak <= const and const - peak < (1e-6 if fn is nn.functional.gelu else 1e-3)
    assert abs(GELU_LIPSCHITZ - 1.1289) < 1e-4


def test_the_mlp_ffn_of_a_model_is_bounded_by_its_parts() -> None:
    model = fl.build_model(
        dict(kind="decoder_lm", vocab_size=8, dim=16, depth=1, num_heads=2, max_seq_len=8,
             norm={"kind": "none"}, linear={"kind": "lipschitz", "max_norm": 0.5}, init_std=1.0)
    )  # fmt: skip
    ffn = model.transformer.blocks[0].ffn.double()
    bound = lipschitz_bound(ffn)
    assert bound == pytest.approx(0.25 * GELU_LIPSCHITZ, rel=1e-5)
    x = torch.randn(2000, 16, dtype=torch.float64)
    assert float(_ratios(ffn, x, x + 1e-3 * torch.randn_like(x)).max()) <= bound


def test_attention_is_refused_naming_the_part() -> None:
    model = fl.build_model(
        dict(kind="decoder_lm", vocab_size=8, dim=16, depth=2, num_heads=2, max_seq_len=8,
             norm={"kind": "none"})
    )  # fmt: skip
    with pytest.raises(
        fl.ConfigError, match=r"model\.transformer\.blocks\.0\.attn: attention kind"
    ):
        lipschitz_bound(model)


def test_normalization_layers_are_refused_naming_the_part() -> None:
    model = fl.build_model(
        dict(kind="decoder_lm", vocab_size=8, dim=16, depth=1, num_heads=2, max_seq_len=8)
    )
    with pytest.raises(fl.ConfigError, match=r"blocks\.0\.attn_norm: norm kind 'layernorm'"):
        lipschitz_bound(model)
    with pytest.raises(fl.ConfigError, match=r"net\.1: no Lipschitz bound is known for Tanh"):
        lipschitz_bound(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), "net")


def test_squared_relu_is_refused() -> None:
    model = fl.build_model(
        dict(kind="decoder_lm", vocab_size=8, dim=16, depth=1, num_heads=2, max_seq_len=8,
             ffn={"kind": "mlp", "activation": "relu2"})
    )  # fmt: skip
    with pytest.raises(fl.ConfigError, match=r"ffn\.activation: activation 'relu2'"):
        lipschitz_bound(model.transformer.blocks[0].ffn, "model.transformer.blocks.0.ffn")


def test_bound_grows_with_depth_as_the_product_of_residual_factors() -> None:
    shallow, deep = _residual_mlp(depth=1), _residual_mlp(depth=3)
    per_block = 1 + GELU_LIPSCHITZ
    assert lipschitz_bound(deep) / lipschitz_bound(shallow) == pytest.approx(per_block**2, 1e-5)
    assert math.isfinite(lipschitz_bound(deep))
