"""Gated attention (Bondarenko et al., 2023): a gate of 1 is softmax attention; the gate scales each
head's output per token before the output projection; its initial value survives model init."""

from __future__ import annotations

import math

import pytest
import torch

import formerlab as fl
from formerlab.layers.attention import AttentionConfig, build_attention
from formerlab.layers.linear import DenseConfig

DIM, HEADS, HD = 16, 2, 8
TINY = dict(vocab_size=29, dim=DIM, depth=2, num_heads=HEADS, max_seq_len=16)


def layer(attn: dict, *, causal: bool) -> torch.nn.Module:
    cfg = AttentionConfig.from_dict(attn)
    dims = dict(dim=DIM, num_heads=HEADS, causal=causal, max_seq_len=16, linear=DenseConfig())
    return build_attention(cfg, **dims).double().eval()


def twins(causal: bool, **extra) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A gated layer and a softmax layer with the same q/k/v/out weights."""
    gated = layer({"kind": "gated", **extra}, causal=causal)
    softmax = layer({"kind": "softmax", **extra}, causal=causal)
    result = softmax.load_state_dict(gated.state_dict(), strict=False)
    assert set(result.unexpected_keys) == {"gate_proj.weight", "gate_bias"}
    assert not result.missing_keys
    return gated, softmax


def set_gate_logits(gated: torch.nn.Module, logits: list[float]) -> None:
    """Make the gate input-independent: sigmoid(0 * x + logits)."""
    with torch.no_grad():
        gated.gate_proj.weight.zero_()
        gated.gate_bias.copy_(torch.tensor(logits, dtype=torch.float64))


def test_gate_of_one_decoder_equals_softmax_decoder() -> None:
    gated = fl.build_model({"kind": "decoder_lm", **TINY, "attention": {"kind": "gated"}}).double()
    softmax = fl.build_model({"kind": "decoder_lm", **TINY}).double()
    softmax.load_state_dict(gated.state_dict(), strict=False)
    for block in gated.transformer.blocks:
        set_gate_logits(block.attn, [40.0] * HEADS)  # sigmoid(40) rounds to exactly 1.0
        assert (block.attn.gate(torch.randn(1, 3, DIM, dtype=torch.float64)) == 1.0).all()
    ids = torch.randint(0, 29, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(gated(ids), softmax(ids), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_gate_of_one_layer_equals_softmax_with_padding_and_grouped_heads(causal: bool) -> None:
    gated, softmax = twins(causal, num_kv_heads=1)
    set_gate_logits(gated, [40.0] * HEADS)
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, :2] = False
    with torch.no_grad():
        got, want = gated(x, attention_mask=mask), softmax(x, attention_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_each_head_is_scaled_by_its_own_gate_before_the_output_projection() -> None:
    gated, softmax = twins(causal=True)
    g0, g1 = 0.3, 0.8
    set_gate_logits(gated, [math.log(g0 / (1 - g0)), math.log(g1 / (1 - g1))])
    with torch.no_grad():  # the twin reaches the same result by scaling out_proj's input columns
        softmax.out_proj.weight[:, :HD] *= g0
        softmax.out_proj.weight[:, HD:] *= g1
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), softmax(x), rtol=1e-12, atol=1e-12)


def test_gate_is_computed_per_token_from_the_input() -> None:
    gated, softmax = twins(causal=False)
    x = torch.randn(1, 5, DIM, dtype=torch.float64)
    w, b = gated.gate_proj.weight, gated.gate_bias
    want = torch.sigmoid(x @ w.T + b)  # (1, T, nh)
    torch.testing.assert_close(gated.gate(x)[..., 0], want.transpose(1, 2))
    assert want.std(dim=1).min() > 0  # different tokens get different gates
    with torch.no_grad():
        y = gated(x) - gated.out_proj.bias
        heads = softmax(x) - softmax.out_proj.bias  # W_o applied to ungated heads
    assert (y - heads).abs().max() > 1e-3


def test_gate_init_survives_model_initialisation_and_uses_the_linear_group() -> None:
    model = fl.build_model({"kind": "encoder", **TINY, "attention": {"kind": "gated"}})
    for block in model.transformer.blocks:
        attn = block.attn
        torch.testing.assert_close(torch.sigmoid(attn.gate_bias), torch.full((HEADS,), 0.25))
        assert type(attn.gate_proj) is type(attn.out_proj)
        assert attn.gate_proj.weight.shape == (HEADS, DIM)


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5])
def test_gate_init_outside_0_1_is_a_config_error(value: float) -> None:
    with pytest.raises(fl.ConfigError, match=r"model\.attention\.gate_init.*0 < p < 1"):
        fl.build_model(
            {"kind": "encoder", **TINY, "attention": {"kind": "gated", "gate_init": value}}
        )


def test_gate_of_one_cross_attention_equals_softmax_cross_attention(
    cross_twins, cross_outputs
) -> None:
    ours, softmax = cross_twins({"kind": "gated"})
    set_gate_logits(ours, [40.0] * HEADS)
    got, want = cross_outputs(ours, softmax)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
