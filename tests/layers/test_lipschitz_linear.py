"""The ``lipschitz`` linear kind: it is a dense layer, its spectral norm stays within the cap after
init and after every update, each method does what it says, and norm-free models train with it."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl
from formerlab.layers.linear import ConcatLinear, LipschitzConfig, LipschitzLinear
from formerlab.train.trainer import after_optimizer_step

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: 1 thread is fastest


def _layer(out: int = 12, inp: int = 20, **cfg) -> LipschitzLinear:
    return LipschitzLinear(LipschitzConfig(**cfg), in_features=inp, out_features=out, bias=True)


def _sigma(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.detach().double(), ord=2))


def test_forward_is_x_wt_plus_b_in_float64() -> None:
    torch.manual_seed(0)
    layer = _layer().double()
    x = torch.randn(3, 5, 20, dtype=torch.float64)
    expected = x @ layer.weight.T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-13)
    assert layer.effective_weight() is layer.weight
    no_bias = LipschitzLinear(LipschitzConfig(), in_features=4, out_features=3, bias=False)
    assert no_bias.bias is None and no_bias(torch.ones(2, 4)).shape == (2, 3)


@pytest.mark.parametrize("method", ["normalize", "svd_cap"])
@pytest.mark.parametrize(("shape", "cap"), [((12, 20), 1.0), ((40, 8), 0.3), ((16, 16), 2.5)])
def test_cap_holds_after_many_random_updates(method: str, shape: tuple[int, int], cap: float):
    torch.manual_seed(1)
    layer = _layer(*shape, max_norm=cap, method=method)
    exceeded = 0
    for _ in range(50):
        with torch.no_grad():
            layer.weight.add_(torch.randn(shape) * 0.3)
        exceeded += _sigma(layer.weight) > cap
        after_optimizer_step(layer)
        assert _sigma(layer.weight) <= cap * (1 + 1e-6)
    assert exceeded >= 40  # the updates really left the ball: the projection did the work


def test_normalize_scales_only_matrices_outside_the_ball() -> None:
    torch.manual_seed(2)
    layer = _layer(max_norm=1.0).double()
    inside = layer.weight.detach() * (0.5 / _sigma(layer.weight))
    with torch.no_grad():
        layer.weight.copy_(inside)
    layer.after_optimizer_step()
    assert torch.equal(layer.weight.detach(), inside)  # untouched
    outside = torch.randn(12, 20, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(outside)
    layer.after_optimizer_step()
    torch.testing.assert_close(layer.weight.detach(), outside / _sigma(outside), rtol=1e-12, atol=0)


def test_svd_cap_clips_only_the_large_singular_values() -> None:
    torch.manual_seed(3)
    layer = _layer(max_norm=1.0, method="svd_cap").double()
    u = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(20, 12, dtype=torch.float64))[0]
    s = torch.linspace(0.1, 3.0, 12, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_((u * s) @ v.T)
    layer.after_optimizer_step()
    got = torch.linalg.svdvals(layer.weight.detach()).flip(0)
    torch.testing.assert_close(got, s.clamp(max=1.0), rtol=0, atol=1e-12)


def test_the_cap_is_enforced_at_initialisation() -> None:
    torch.manual_seed(4)
    layer = _layer(64, 64, max_norm=0.05)  # torch's default init has sigma ~ 1 here
    assert _sigma(layer.weight) <= 0.05 * (1 + 1e-6)
    layer.init_normal_(1.0)
    assert _sigma(layer.weight) <= 0.05 * (1 + 1e-6) and not layer.bias.any()
    model = fl.build_model(
        dict(kind="decoder_lm", vocab_size=32, dim=32, depth=2, num_heads=2, max_seq_len=8,
             linear={"kind": "lipschitz", "max_norm": 0.01}, init_std=0.5, tie_embeddings=False)
    )  # fmt: skip
    capped = [m for m in model.modules() if isinstance(m, LipschitzLinear)]
    assert len(capped) == 2 * 6 + 1  # q, k, v, out, fc1, fc2 per block, and the LM head
    assert all(_sigma(m.weight) <= 0.01 * (1 + 1e-6) for m in capped)


def test_attention_projections_are_capped_one_by_one() -> None:
    model = fl.build_model(
        dict(kind="decoder_lm", vocab_size=32, dim=16, depth=1, num_heads=2, max_seq_len=8,
             linear={"kind": "lipschitz"})
    )  # fmt: skip
    qkv = model.transformer.blocks[0].attn.qkv_proj
    assert isinstance(qkv, ConcatLinear) and len(qkv.parts) == 3
    assert all(isinstance(p, LipschitzLinear) for p in qkv.parts)


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_norm", 0.0), ("max_norm", -1.0), ("max_norm", float("inf")), ("method", "hammer")],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(fl.ConfigError, match=rf"model\.linear\.{field}: invalid value"):
        fl.build_model(
            dict(kind="decoder_lm", vocab_size=8, dim=16, depth=1, num_heads=2, max_seq_len=8,
                 linear={"kind": "lipschitz", field: value})
        )  # fmt: skip


def test_a_norm_free_model_trains_with_capped_weights() -> None:
    """No LayerNorm anywhere (``norm: none``), every projection capped at 1: the loss of a small
    per-token task falls, nothing goes non-finite, and the cap holds after each step."""
    torch.manual_seed(0)
    model = fl.build_model(
        dict(kind="decoder_lm", vocab_size=16, dim=32, depth=2, num_heads=2, max_seq_len=16,
             norm={"kind": "none"}, linear={"kind": "lipschitz", "max_norm": 1.0})
    )  # fmt: skip
    opt = fl.train.build_optimizer({"kind": "adamw", "lr": 1e-2, "weight_decay": 0.0}, model)
    capped = [m for m in model.modules() if isinstance(m, LipschitzLinear)]
    losses, at_cap = [], 0
    for step in range(20):
        g = torch.Generator().manual_seed(step)
        ids = torch.randint(0, 16, (16, 12), generator=g)
        logits = model(ids)  # target: a fixed per-token map (token + 1 mod 16)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ((ids + 1) % 16).flatten())
        loss.backward()
        opt.step()
        after_optimizer_step(model)
        opt.zero_grad()
        losses.append(float(loss.detach()))
        sigmas = [_sigma(m.weight) for m in capped]
        assert max(sigmas) <= 1.0 + 1e-6
        at_cap += any(s > 0.999 for s in sigmas)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2
    assert at_cap > 0  # training pushed some matrix to the cap, where the projection acts
