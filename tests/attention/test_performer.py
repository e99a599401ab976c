"""Performer / FAVOR+ (Choromanski et al., 2020), in float64: the estimator of exp(q^T k) improves as m
grows and orthogonal features beat i.i.d. ones (mean over seeds); the stabilised causal prefix-sum
form equals the unstabilised masked quadratic form; the layer equals a naive reference, approaches
softmax attention as m grows, decodes from its running state, and redraws features reproducibly."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.layers.attention import AttentionConfig, build_attention
from formerlab.layers.linear import DenseConfig
from formerlab.ops.linear_attention import (
    causal_linear_attention,
    draw_random_features,
    favor_log_features,
    quadratic_linear_attention,
    stable_query_features,
)

DIM, HEADS, HD = 16, 2, 8


def layer(attn: dict, *, causal: bool) -> torch.nn.Module:
    cfg = AttentionConfig.from_dict(attn)
    dims = dict(dim=DIM, num_heads=HEADS, causal=causal, max_seq_len=32, linear=DenseConfig())
    return build_attention(cfg, **dims).double().eval()


def kernel_mse(m: int, *, orthogonal: bool, seeds: range, d: int = 16) -> float:
    """Mean over seeds of the squared error of phi(q)^T phi(k) against exp(q^T k)."""
    g = torch.Generator().manual_seed(123)
    q = torch.randn(32, d, generator=g, dtype=torch.float64) * 0.15
    k = torch.randn(32, d, generator=g, dtype=torch.float64) * 0.15
    exact = (q @ k.T).exp()
    errors = []
    for seed in seeds:
        omega = draw_random_features(
            m, d, orthogonal=orthogonal, generator=torch.Generator().manual_seed(seed)
        )
        estimate = favor_log_features(q, omega).exp() @ favor_log_features(k, omega).exp().T
        errors.append((estimate - exact).square().mean())
    return float(torch.stack(errors).mean())


def test_kernel_estimation_error_falls_as_m_grows() -> None:
    mse = {m: kernel_mse(m, orthogonal=True, seeds=range(30)) for m in (16, 64, 256)}
    assert mse[16] > mse[64] > mse[256]
    assert mse[256] < mse[16] / 8  # variance ~ 1/m: 16x more features, well over 8x less error


@pytest.mark.parametrize("m", [16, 64])
def test_orthogonal_features_beat_iid_features(m: int) -> None:
    seeds = range(40)
    assert kernel_mse(m, orthogonal=True, seeds=seeds) < kernel_mse(
        m, orthogonal=False, seeds=seeds
    )


def test_orthogonal_draw_has_orthogonal_blocks_and_gaussian_norms() -> None:
    g = torch.Generator().manual_seed(0)
    omega = draw_random_features(40, 8, orthogonal=True, generator=g)
    for block in omega.split(8):
        unit = block / block.norm(dim=1, keepdim=True)
        torch.testing.assert_close(unit @ unit.T, torch.eye(len(block), dtype=torch.float64))
    iid = draw_random_features(40, 8, orthogonal=False, generator=g)[:8]
    unit = iid / iid.norm(dim=1, keepdim=True)
    assert (unit @ unit.T - torch.eye(8, dtype=torch.float64)).abs().max() > 0.1
    norms = draw_random_features(4000, 8, generator=g).square().sum(1)
    assert abs(float(norms.mean()) - 8) < 0.4  # |omega|^2 ~ chi^2_d: mean d, variance 2d
    assert abs(float(norms.var()) - 16) < 2.5


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_stabilised_causal_prefix_form_equals_masked_quadratic_form(chunk_size: int) -> None:
    omega = draw_random_features(12, HD, generator=torch.Generator().manual_seed(1))
    q, k = torch.randn(2, 2, 2, 11, HD, dtype=torch.float64).mul(2).unbind(0)
    v = torch.randn(2, 2, 11, 5, dtype=torch.float64)
    log_q, log_k = favor_log_features(q, omega), favor_log_features(k, omega)
    y, _ = causal_linear_attention(
        stable_query_features(log_q), log_k, v, chunk_size=chunk_size, log_keys=True
    )
    reference = quadratic_linear_attention(log_q.exp(), log_k.exp(), v, causal=True)
    torch.testing.assert_close(y, reference)


def naive_performer(attn: torch.nn.Module, x: torch.Tensor, *, causal: bool, mask=None):
    """Unstabilised FAVOR+ features, T x T kernel matrix, mask, row-normalise: the O(T^2) way."""
    B, T, _ = x.shape
    q, k, v = (
        t.reshape(B, T, HEADS, HD).transpose(1, 2) for t in attn.qkv_proj(x).split(DIM, dim=-1)
    )
    omega, m = attn.omega, attn.omega.size(0)

    def phi(t):
        t = t / HD**0.25
        return torch.exp(t @ omega.T - t.square().sum(-1, keepdim=True) / 2) / math.sqrt(m)

    kernel = phi(q) @ phi(k).transpose(-1, -2)  # (B, nh, T, T)
    allowed = torch.ones(T, T, dtype=torch.bool)
    allowed = allowed.tril() if causal else allowed
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    weights = kernel * allowed
    y = weights @ v / weights.sum(-1, keepdim=True)
    return attn.out_proj(y.transpose(1, 2).reshape(B, T, DIM))


@pytest.mark.parametrize("causal", [True, False])
def test_layer_equals_naive_reference(causal: bool) -> None:
    attn = layer({"kind": "performer", "num_features": 10, "chunk_size": 4}, causal=causal)
    x = torch.randn(3, 10, DIM, dtype=torch.float64) * 3
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 6:] = False
    with torch.no_grad():
        for m in (None, mask):
            torch.testing.assert_close(
                attn(x, attention_mask=m), naive_performer(attn, x, causal=causal, mask=m)
            )


def test_layer_approaches_softmax_attention_as_m_grows() -> None:
    x = torch.randn(2, 12, DIM, dtype=torch.float64)
    softmax = layer({"kind": "softmax"}, causal=True)
    errors = {}
    for m in (4, 512):
        attn = layer({"kind": "performer", "num_features": m}, causal=True)
        attn.load_state_dict(softmax.state_dict(), strict=False)  # same projections
        with torch.no_grad():
            target = softmax(x)
            per_draw = []
            for index in range(5):
                attn.redraw(index)
                per_draw.append((attn(x) - target).square().mean())
        errors[m] = float(torch.stack(per_draw).mean())
    assert errors[512] < errors[4] / 10


def test_decode_with_running_state_equals_full_forward() -> None:
    attn = layer({"kind": "performer", "num_features": 12, "chunk_size": 3}, causal=True)
    x = torch.randn(2, 14, DIM, dtype=torch.float64) * 4
    with torch.no_grad():
        full = attn(x)
        cache: dict = {}
        steps = [attn(x[:, :4], cache=cache)]
        steps += [attn(x[:, t : t + 1], cache=cache) for t in range(4, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-12, atol=1e-12)
    assert cache["prefix_state"].kv.shape == (2, HEADS, 12, HD)


def train_forwards(attn: torch.nn.Module, n: int) -> None:
    attn.train()
    for _ in range(n):
        attn(torch.randn(1, 3, DIM, dtype=torch.float64))
    attn.eval()


def test_fixed_features_never_change() -> None:
    attn = layer({"kind": "performer", "num_features": 6}, causal=False)
    before = attn.omega.clone()
    train_forwards(attn, 5)
    assert torch.equal(attn.omega, before)


def test_redraw_every_n_training_passes_and_never_in_eval() -> None:
    attn = layer({"kind": "performer", "num_features": 6, "redraw_every": 2}, causal=False)
    first = attn.omega.clone()
    train_forwards(attn, 2)
    assert torch.equal(attn.omega, first)
    train_forwards(attn, 1)  # the third pass starts the second draw
    second = attn.omega.clone()
    assert not torch.allclose(second, first)
    with torch.no_grad():
        attn(torch.randn(1, 3, DIM, dtype=torch.float64))  # eval: no count, no redraw
    train_forwards(attn, 1)
    assert torch.equal(attn.omega, second) and int(attn.forward_count) == 4


def test_redraws_resume_identically_from_a_state_dict() -> None:
    spec = {"kind": "performer", "num_features": 6, "redraw_every": 2}
    straight = layer(spec, causal=False)
    first_half = layer(spec, causal=False)
    first_half.load_state_dict(straight.state_dict())
    train_forwards(straight, 7)
    train_forwards(first_half, 3)
    resumed = layer(spec, causal=False)  # a different random seed until the state is loaded
    assert not torch.equal(resumed.feature_seed, straight.feature_seed)
    resumed.load_state_dict(first_half.state_dict())
    train_forwards(resumed, 4)
    assert torch.equal(resumed.omega, straight.omega)


def test_features_are_saved_with_the_model(tmp_path) -> None:
    model = fl.build_model(
        {
            "kind": "decoder_lm",
            "vocab_size": 13,
            "dim": DIM,
            "depth": 1,
            "num_heads": HEADS,
            "max_seq_len": 16,
            "attention": {"kind": "performer", "num_features": 8},
        }
    ).eval()
    ids = torch.randint(0, 13, (2, 9))
    fl.save_pretrained(model, tmp_path)
    loaded = fl.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("num_features", 0, "allowed: >= 1"),
        ("redraw_every", -1, "allowed: 0 \\(fixed\\) or >= 1"),
        ("features", "gaussian", "allowed: 'orthogonal' \\| 'iid'"),
        ("chunk_size", -2, "allowed: >= 1"),
    ],
)
def test_bad_config_names_field_value_and_allowed(field: str, value, allowed: str) -> None:
    cfg = {"kind": "decoder_lm", "vocab_size": 11, "dim": DIM, "num_heads": HEADS}
    cfg["attention"] = {"kind": "performer", field: value}
    with pytest.raises(fl.ConfigError, match=rf"model\.attention\.{field}: .*{value}.*{allowed}"):
        fl.load_config({"model": cfg, "task": {"kind": "copy"}})
