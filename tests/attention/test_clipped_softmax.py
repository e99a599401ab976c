"""Clipped softmax (Bondarenko et al., 2023): gamma = 0, zeta = 1 is softmax; otherwise it equals a
naive per-query reference, reaches exact 0 and 1, and keeps masked keys at weight 0."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import formerlab as fl
from formerlab.layers.attention import AttentionConfig, build_attention
from formerlab.layers.linear import DenseConfig
from formerlab.ops.scores import clipped_softmax, explicit_attention

DIM, HEADS = 16, 2


def layer(attn: dict, *, causal: bool) -> torch.nn.Module:
    cfg = AttentionConfig.from_dict(attn)
    dims = dict(dim=DIM, num_heads=HEADS, causal=causal, max_seq_len=16, linear=DenseConfig())
    return build_attention(cfg, **dims).double().eval()


def padded_mask() -> torch.Tensor:
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False  # right padding
    mask[2, :4] = False  # left padding
    return mask


def test_clipped_softmax_op_with_gamma_0_zeta_1_is_softmax() -> None:
    scores = torch.randn(4, 3, 7, 11, dtype=torch.float64) * 5
    torch.testing.assert_close(
        clipped_softmax(scores, zeta=1.0, gamma=0.0), scores.softmax(-1), rtol=0, atol=0
    )


def test_clipped_softmax_op_reaches_exact_zero_and_one() -> None:
    scores = torch.randn(2000, 6, dtype=torch.float64) * 4
    p = scores.softmax(-1)
    zeta, gamma = 1.1, -0.1
    out = clipped_softmax(scores, zeta=zeta, gamma=gamma)
    low, high = -gamma / (zeta - gamma), (1 - gamma) / (zeta - gamma)
    assert (out[p <= low] == 0).all() and (p <= low).any()
    assert (out[p >= high] == 1).all() and (p >= high).any()
    inside = (p > low) & (p < high)
    torch.testing.assert_close(out[inside], (zeta - gamma) * p[inside] + gamma)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_gamma_0_zeta_1_equals_softmax_attention(causal: bool, num_kv_heads: int | None) -> None:
    extra = {"num_kv_heads": num_kv_heads}
    clipped = layer({"kind": "clipped_softmax", "gamma": 0.0, "zeta": 1.0, **extra}, causal=causal)
    softmax = layer({"kind": "softmax", **extra}, causal=causal)
    softmax.load_state_dict(clipped.state_dict())
    x = torch.randn(3, 9, DIM, dtype=torch.float64)
    for mask in (None, padded_mask()):
        with torch.no_grad():
            a, b = clipped(x, attention_mask=mask), softmax(x, attention_mask=mask)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gamma_0_zeta_1_decoder_equals_softmax_decoder() -> None:
    tiny = dict(kind="decoder_lm", vocab_size=29, dim=DIM, depth=2, num_heads=HEADS, max_seq_len=16)
    clipped = fl.build_model({**tiny, "attention": {"kind": "clipped_softmax", "gamma": 0.0}})
    softmax = fl.build_model(tiny)
    softmax.load_state_dict(clipped.state_dict())
    ids = torch.randint(0, 29, (2, 12))
    with torch.no_grad():
        a, b = clipped.double()(ids), softmax.double()(ids)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def naive_clipped_attention(q, k, v, allowed, zeta, gamma) -> torch.Tensor:
    """One query at a time: scores over its allowed keys only, stretched and clipped."""
    out = torch.zeros_like(q)
    for b in range(q.size(0)):
        for h in range(q.size(1)):
            for i in range(q.size(2)):
                keys = allowed[b, i].nonzero().flatten()
                s = k[b, h, keys] @ q[b, h, i] / q.size(-1) ** 0.5
                w = ((zeta - gamma) * torch.softmax(s, 0) + gamma).clamp(0, 1)
                out[b, h, i] = w @ v[b, h, keys]
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_layer_kernel_equals_naive_reference(causal: bool) -> None:
    attn = layer({"kind": "clipped_softmax", "zeta": 1.05, "gamma": -0.08}, causal=causal)
    q, k, v = (torch.randn(2, HEADS, 7, DIM // HEADS, dtype=torch.float64) * 2 for _ in range(3))
    key_mask = torch.ones(2, 7, dtype=torch.bool)
    key_mask[1, 5:] = False
    allowed = key_mask[:, None, :].expand(2, 7, 7)
    if causal:
        allowed = allowed & torch.ones(7, 7, dtype=torch.bool).tril()
    got = attn.attend(q, k, v, key_mask=key_mask, cache=None)
    want = naive_clipped_attention(q, k, v, allowed, 1.05, -0.08)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    plain = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], is_causal=False)
    assert (got - plain).abs().max() > 1e-3  # the clipping really changes the output


def test_explicit_scores_path_equals_sdpa_for_a_cached_prefix_and_grouped_heads() -> None:
    q = torch.randn(2, 4, 3, 8, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 10, 8, dtype=torch.float64) for _ in range(2))
    got = explicit_attention(q, k, v, causal=True, key_mask=None)
    allowed = torch.ones(3, 10, dtype=torch.bool).tril(7)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("zeta", 0.9, ">= 1"), ("gamma", 0.01, "<= 0"), ("gamma", float("nan"), "<= 0")],
)
def test_bad_hyperparameters_name_the_field(field: str, value: float, allowed: str) -> None:
    cfg = dict(kind="encoder", vocab_size=29, dim=DIM, depth=1, num_heads=HEADS)
    with pytest.raises(fl.ConfigError, match=f"model.attention.{field}.*{allowed}"):
        fl.build_model({**cfg, "attention": {"kind": "clipped_softmax", field: value}})


def test_gamma_0_zeta_1_cross_attention_equals_softmax_cross_attention(
    cross_twins, cross_outputs
) -> None:
    ours, softmax = cross_twins({"kind": "clipped_softmax", "gamma": 0.0, "zeta": 1.0})
    got, want = cross_outputs(ours, softmax)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
