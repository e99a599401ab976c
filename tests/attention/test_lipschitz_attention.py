"""Bounded attention (``lipschitz``): the forward is the stated formula (float64 reference), the
input projection is non-expansive, and the certified constant is exact where it can be attained
and needs its score term and its sqrt(T) factor."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.errors import ConfigError
from formerlab.layers.attention import AttentionConfig, build_attention
from formerlab.layers.attention.lipschitz import project_to_ball
from formerlab.layers.linear import DenseConfig, LipschitzConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _attn(dim=8, heads=2, causal=True, T=6, linear=None, **cfg):
    config = AttentionConfig.from_dict({"kind": "lipschitz", **cfg})
    layer = build_attention(
        config, dim=dim, num_heads=heads, causal=causal, max_seq_len=T,
        linear=linear or LipschitzConfig(max_norm=1.0),
    )  # fmt: skip
    return layer.double().eval()


def _reference(layer, x: torch.Tensor) -> torch.Tensor:
    """project tokens -> per head softmax(q k^T / d) v (causal) -> * out_scale -> W_o."""
    radius = layer.config.max_rms * math.sqrt(x.size(-1))
    norms = x.norm(dim=-1, keepdim=True)
    xt = torch.where(norms > radius, x * radius / norms, x)
    (wq, bq), (wk, bk), (wv, bv) = layer.qkv_parts()
    d, T = layer.head_dim, x.size(1)
    heads = []
    for h in range(layer.num_heads):
        rows = slice(h * d, (h + 1) * d)
        q, k, v = (xt @ w[rows].T + (0 if b is None else b[rows]) for w, b in
                   ((wq, bq), (wk, bk), (wv, bv)))  # fmt: skip
        scores = q @ k.transpose(-1, -2) / d
        if layer.causal:
            future = torch.ones(T, T, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        heads.append(scores.softmax(-1) @ v)
    y = torch.cat(heads, -1) * layer.config.out_scale
    return layer.out_proj(y)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("linear", [LipschitzConfig(max_norm=1.0), DenseConfig()])
def test_forward_is_the_formula(causal: bool, linear) -> None:
    torch.manual_seed(0)
    layer = _attn(causal=causal, linear=linear, max_rms=0.5, out_scale=0.7)
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    x[0, :3] *= 0.05  # some tokens inside the ball, the rest projected onto it
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-12, atol=1e-12)


def test_projection_onto_the_ball_is_non_expansive_and_idempotent() -> None:
    torch.manual_seed(1)
    x, y = (torch.randn(5000, 4, dtype=torch.float64) * 2 for _ in range(2))
    px, py = project_to_ball(x, 1.5), project_to_ball(y, 1.5)
    assert float(px.norm(dim=-1).max()) <= 1.5 * (1 + 1e-12)
    assert bool(((px - py).norm(dim=-1) <= (x - y).norm(dim=-1) * (1 + 1e-12)).all())
    torch.testing.assert_close(project_to_ball(px, 1.5), px, rtol=1e-12, atol=0)
    inside = x[x.norm(dim=-1) < 1.5]
    assert torch.equal(project_to_ball(inside, 1.5), inside)


def _value_only(a: float, b: float, T: int):
    """One head, W_q = 0 (uniform attention), W_v = a I, W_o = b I: the score term vanishes."""
    layer = _attn(dim=4, heads=1, T=T, bias=False, out_scale=0.5)
    (wq, _), (wk, _), (wv, _) = layer.qkv_parts()
    with torch.no_grad():
        wq.zero_()
        wk.copy_(torch.eye(4, dtype=torch.float64))
        wv.copy_(a * torch.eye(4, dtype=torch.float64))
        layer.out_proj.weight.copy_(b * torch.eye(4, dtype=torch.float64))
    return layer


def test_token_max_constant_is_attained_when_the_score_term_vanishes() -> None:
    layer = _value_only(0.8, 0.9, T=5)
    bound = layer.lipschitz_constant("token_max")
    assert bound == pytest.approx(0.5 * 0.8 * 0.9, rel=1e-12)
    x = 0.1 * torch.randn(1, 5, 4, dtype=torch.float64)
    delta = torch.full((1, 5, 4), 0.05, dtype=torch.float64)  # the same shift on every token
    with torch.no_grad():
        out = (layer(x + delta) - layer(x)).norm(dim=-1).amax()
    assert float(out / delta.norm(dim=-1).amax()) == pytest.approx(bound, rel=1e-12)


def test_euclidean_constant_needs_its_sqrt_t_factor() -> None:
    """A shift of the first token alone moves every causal output by 1/(t+1) of it: the Euclidean
    ratio is c sqrt(sum 1/t^2) > c, the per-token constant; the bound (c sqrt(T)) still holds."""
    T = 6
    layer = _value_only(0.8, 0.9, T=T)
    c = 0.5 * 0.8 * 0.9
    x = 0.1 * torch.randn(1, T, 4, dtype=torch.float64)
    delta = torch.zeros(1, T, 4, dtype=torch.float64)
    delta[0, 0, 0] = 0.05
    with torch.no_grad():
        ratio = float((layer(x + delta) - layer(x)).norm() / delta.norm())
    exact = c * math.sqrt(sum(1 / t**2 for t in range(1, T + 1)))
    assert ratio == pytest.approx(exact, rel=1e-12) and ratio > c
    assert layer.lipschitz_constant("euclidean") == pytest.approx(c * math.sqrt(T), rel=1e-12)


def test_constant_needs_its_score_term() -> None:
    """dim 1, all weights 1, tokens (-R, 0): the scores are (0, 0), so token 1 averages both, and
    moving it moves the scores too: dy_1/dx_1 = p_1 + p_0 p_1 (2 x_1 - x_0)(x_1 - x_0)
    = 1/2 + R^2/4, above the value path's constant 1 and below the certified one."""
    R = 3.0
    layer = _attn(dim=1, heads=1, T=2, bias=False, max_rms=R, out_scale=1.0)
    with torch.no_grad():
        for w, _ in layer.qkv_parts():
            w.fill_(1.0)
        layer.out_proj.weight.fill_(1.0)
    x = torch.tensor([[[-R], [0.0]]], dtype=torch.float64)
    eps = torch.tensor([[[0.0], [1e-7]]], dtype=torch.float64)
    with torch.no_grad():
        out = layer(x + eps) - layer(x)
    assert float(out[0, 0, 0]) == 0.0  # causal: token 0 does not see token 1
    ratio = float(out.abs().max()) / 1e-7
    assert ratio == pytest.approx(0.5 + R * R / 4, rel=1e-5)
    assert 1.0 < ratio <= layer.lipschitz_constant("token_max")
    assert layer.lipschitz_constant("token_max") == pytest.approx(1 + 2 * R * R, rel=1e-12)


def test_biases_count_in_the_constant() -> None:
    torch.manual_seed(2)
    plain = _attn(bias=False)
    biased = _attn(bias=True)
    biased.load_state_dict(plain.state_dict(), strict=False)
    (_, bq), (_, bk), (_, bv) = biased.qkv_parts()
    with torch.no_grad():
        for b in (bq, bk, bv):
            b.fill_(0.0)
    assert biased.lipschitz_constant() == pytest.approx(plain.lipschitz_constant(), rel=1e-12)
    with torch.no_grad():
        bv.fill_(1.0)
    assert biased.lipschitz_constant() > plain.lipschitz_constant()


@pytest.mark.parametrize(
    ("field", "value"), [("max_rms", 0.0), ("max_rms", float("inf")), ("out_scale", -1.0)]
)
def test_bad_config_is_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"model\.attention\.{field}: invalid value"):
        AttentionConfig.from_dict({"kind": "lipschitz", field: value}, "model.attention")


def test_unknown_norm_and_cross_attention_are_refused() -> None:
    with pytest.raises(ConfigError, match="allowed: euclidean, token_max"):
        _attn().lipschitz_constant("spectral")
    with pytest.raises(ConfigError, match="supports_cross"):
        build_attention(
            AttentionConfig.from_dict({"kind": "lipschitz"}), dim=8, num_heads=2, causal=False,
            max_seq_len=4, linear=DenseConfig(), cross=True,
        )  # fmt: skip


def test_a_compressed_stream_is_refused() -> None:
    """crmsnorm stores the stream in dim - 1 coordinates; the ball projection needs the full
    token norm, so the model is refused at build time instead of computing the wrong one."""
    cfg = dict(kind="decoder_lm", vocab_size=8, dim=8, depth=1, num_heads=2, max_seq_len=4,
               attention={"kind": "lipschitz"}, norm={"kind": "crmsnorm"})  # fmt: skip
    with pytest.raises(ConfigError, match="no linear stream input ports"):
        fl.build_model(cfg)
