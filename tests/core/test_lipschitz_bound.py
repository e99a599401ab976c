"""The certified Lipschitz bound: it holds for every sampled pair (random and adversarial), it is
attained on one-layer cases, the activation constants are right, norm-free transformers with the
bounded ``lipschitz`` attention are certified in both norms (and softmax attention with the same
weights breaks their bound), and unbounded parts are refused."""

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
from formerlab.models.base import TransformerStack

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


# -- transformers with bounded attention ---------------------------------------------------------
T, D = 8, 16


def _transformer(kind: str = "decoder_lm", position: str = "learned", **over) -> nn.Module:
    torch.manual_seed(3)
    cfg = dict(kind=kind, vocab_size=8, dim=D, depth=2, num_heads=2, max_seq_len=T,
               attention={"kind": "lipschitz"}, norm={"kind": "none"},
               ffn={"kind": "mlp", "activation": "gelu"}, position={"kind": position},
               linear={"kind": "lipschitz", "max_norm": 1.0}, init_std=1.0)  # fmt: skip
    return fl.build_model({**cfg, **over}).double().eval()


def _hidden(stack: TransformerStack, x: torch.Tensor) -> torch.Tensor:
    """The certified map: embedded input -> blocks (rotary tables as the model passes them)."""
    rotary = stack.position.rotary(torch.arange(x.size(1)), x.dtype)
    with torch.no_grad():
        for block in stack.blocks:
            x = block(x, rotary=rotary)
        return stack.final_norm(x)


def _pair_ratios(stack: TransformerStack, x: torch.Tensor, y: torch.Tensor):
    out, inp = _hidden(stack, x) - _hidden(stack, y), x - y
    euclid = out.flatten(1).norm(dim=1) / inp.flatten(1).norm(dim=1)
    token = out.norm(dim=-1).amax(1) / inp.norm(dim=-1).amax(1)
    return float(euclid.max()), float(token.max())


def _pairs(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Far pairs at scales from inside the attention's ball (RMS 1) to far outside it, and near
    pairs (the local slope)."""
    g = torch.Generator().manual_seed(4)
    scale = torch.logspace(-1, 1.5, n // 2, dtype=torch.float64)[:, None, None]
    x = torch.randn(n, T, D, generator=g, dtype=torch.float64) * torch.cat([scale, scale])
    y = torch.cat(
        [
            torch.randn(n // 2, T, D, generator=g, dtype=torch.float64) * scale,
            x[n // 2 :] + 1e-3 * torch.randn(n // 2, T, D, generator=g, dtype=torch.float64),
        ]
    )
    return x, y


@pytest.mark.parametrize(
    ("kind", "position"), [("decoder_lm", "learned"), ("decoder_lm", "rope"), ("encoder", "none")]
)
def test_transformer_bound_holds_on_two_thousand_pairs_in_both_norms(kind, position) -> None:
    model = _transformer(kind, position)
    euclid, token = lipschitz_bound(model), lipschitz_bound(model, norm="token_max")
    assert math.isfinite(euclid) and token < euclid  # sqrt(T) factors in the Euclidean one
    worst = _pair_ratios(model.transformer, *_pairs())
    assert worst[0] <= euclid and worst[1] <= token


def test_transformer_bound_is_the_product_of_its_block_factors() -> None:
    model = _transformer()
    for norm in ("euclidean", "token_max"):
        expected = math.prod(
            (1 + b.attn.lipschitz_constant(norm)) * (1 + lipschitz_bound(b.ffn))
            for b in model.transformer.blocks
        )
        assert lipschitz_bound(model, norm=norm) == pytest.approx(expected, rel=1e-12)


def test_softmax_attention_with_the_same_weights_breaks_the_bound() -> None:
    """The sampled-pairs test can fail: the same weights under plain softmax attention (scores
    q·k/sqrt(d), no input ball) exceed the bounded model's certificate on large inputs."""
    bounded = _transformer()
    softmax = _transformer(attention={"kind": "softmax"})
    softmax.load_state_dict(bounded.state_dict())
    g = torch.Generator().manual_seed(5)
    x = 100 * torch.randn(500, T, D, generator=g, dtype=torch.float64)
    y = x + 1e-3 * torch.randn(500, T, D, generator=g, dtype=torch.float64)
    bound = lipschitz_bound(bounded)
    assert _pair_ratios(softmax.transformer, x, y)[0] > bound
    assert _pair_ratios(bounded.transformer, x, y)[0] <= bound


def test_norms_in_a_bounded_transformer_are_refused_naming_the_part() -> None:
    model = _transformer(norm={"kind": "layernorm"})
    with pytest.raises(fl.ConfigError, match=r"blocks\.0\.attn_norm: norm kind 'layernorm'"):
        lipschitz_bound(model)
    with pytest.raises(fl.ConfigError, match=r"norm: 'l1'; allowed: euclidean, token_max"):
        lipschitz_bound(_transformer(), norm="l1")
