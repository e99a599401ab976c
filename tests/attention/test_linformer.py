"""Linformer (Wang et al., 2020): k = T with identity projections is softmax attention; every sharing
option equals a naive per-head reference; padded keys are excluded before the projection; it declares
no causal support, so a decoder with it is a ConfigError."""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn import functional as F

import formerlab as fl
from formerlab.layers.attention import AttentionConfig, build_attention
from formerlab.layers.linear import DenseConfig

DIM, HEADS, HD, N = 16, 2, 8, 12
SHARING = ["none", "headwise", "key_value"]


def layer(attn: dict, *, max_seq_len: int = N) -> torch.nn.Module:
    cfg = AttentionConfig.from_dict(attn)
    dims = dict(
        dim=DIM, num_heads=HEADS, causal=False, max_seq_len=max_seq_len, linear=DenseConfig()
    )
    return build_attention(cfg, **dims).double().eval()


def projections(attn: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in (attn.key_seq_proj, attn.value_seq_proj) if p is not None]


def set_identity(attn: torch.nn.Module, T: int) -> None:
    """E = F = [I_T | anything]: the first T columns project the keys onto themselves."""
    with torch.no_grad():
        for p in projections(attn):
            p[:, :, :T] = torch.eye(T, dtype=p.dtype)


@pytest.mark.parametrize("sharing", SHARING)
def test_k_equal_T_with_identity_projections_equals_softmax_layer(sharing: str) -> None:
    lin = layer({"kind": "linformer", "k": 7, "sharing": sharing})
    set_identity(lin, 7)
    softmax = layer({"kind": "softmax"})
    result = softmax.load_state_dict(lin.state_dict(), strict=False)
    assert not result.missing_keys
    x = torch.randn(3, 7, DIM, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), softmax(x), rtol=1e-12, atol=1e-12)


def test_k_equal_T_with_identity_projections_equals_softmax_encoder() -> None:
    tiny = dict(kind="encoder", vocab_size=29, dim=DIM, depth=2, num_heads=HEADS, max_seq_len=N)
    tiny["head"] = {"kind": "none"}
    lin = fl.build_model({**tiny, "attention": {"kind": "linformer", "k": N}}).double()
    softmax = fl.build_model(tiny).double()
    softmax.load_state_dict(lin.state_dict(), strict=False)
    for block in lin.transformer.blocks:
        set_identity(block.attn, N)
    ids = torch.randint(0, 29, (2, N))
    with torch.no_grad():
        torch.testing.assert_close(lin.encode(ids), softmax.encode(ids), rtol=1e-12, atol=1e-12)


def naive_linformer(attn, q, k, v) -> torch.Tensor:
    """Per head h: softmax(Q_h (E_h K_h)^T / sqrt(d)) (F_h V_h), E_h, F_h the first T columns."""
    T, out = k.size(2), torch.zeros_like(q)
    E = attn.key_seq_proj
    Fv = E if attn.value_seq_proj is None else attn.value_seq_proj
    for h in range(q.size(1)):
        e, f = E[h % E.size(0), :, :T], Fv[h % Fv.size(0), :, :T]  # (k, T)
        for b in range(q.size(0)):
            scores = q[b, h] @ (e @ k[b, h]).T / HD**0.5  # (T, k)
            out[b, h] = torch.softmax(scores, -1) @ (f @ v[b, h])
    return out


@pytest.mark.parametrize("sharing", SHARING)
def test_kernel_equals_naive_reference_for_short_inputs(sharing: str) -> None:
    attn = layer({"kind": "linformer", "k": 4, "sharing": sharing})
    q, k, v = (torch.randn(2, HEADS, 5, HD, dtype=torch.float64) for _ in range(3))
    got = attn.attend(q, k, v, key_mask=None, cache=None)
    torch.testing.assert_close(got, naive_linformer(attn, q, k, v), rtol=1e-12, atol=1e-12)
    exact = F.scaled_dot_product_attention(q, k, v)
    assert (got - exact).abs().max() > 1e-3  # a k < T projection is an approximation


def test_sharing_options_set_the_parameter_count() -> None:
    sizes = {
        s: sum(p.numel() for p in projections(layer({"kind": "linformer", "k": 4, "sharing": s})))
        for s in SHARING
    }
    assert sizes == {"none": 2 * HEADS * 4 * N, "headwise": 2 * 4 * N, "key_value": 4 * N}


@pytest.mark.parametrize("sharing", SHARING)
def test_left_and_inner_padding_equal_the_unpadded_sequence(sharing: str) -> None:
    attn = layer({"kind": "linformer", "k": 4, "sharing": sharing})
    x = torch.randn(1, 5, DIM, dtype=torch.float64)
    padded = torch.randn(2, 8, DIM, dtype=torch.float64)  # junk at the padded positions
    mask = torch.zeros(2, 8, dtype=torch.bool)
    padded[0, 3:], mask[0, 3:] = x[0], True  # left padding
    keep = torch.tensor([0, 1, 3, 5, 6])
    padded[1, keep], mask[1, keep] = x[0], True  # padding between tokens
    with torch.no_grad():
        alone, out = attn(x), attn(padded, attention_mask=mask)
    torch.testing.assert_close(out[0, 3:], alone[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1, keep], alone[0], rtol=1e-12, atol=1e-12)


def test_decoder_with_linformer_is_a_config_error_naming_the_capability() -> None:
    cfg = dict(kind="decoder_lm", vocab_size=29, dim=DIM, depth=1, num_heads=HEADS)
    with pytest.raises(fl.ConfigError, match=r"model\.attention\.kind.*linformer.*supports_causal"):
        fl.build_model({**cfg, "attention": {"kind": "linformer"}})
    caps = fl.describe("attention", "linformer")["capabilities"]
    assert not caps["supports_causal"] and not caps["supports_kv_cache"]
    assert caps["supports_padding_mask"]


def test_more_keys_than_max_seq_len_is_an_input_error() -> None:
    attn = layer({"kind": "linformer", "k": 4}, max_seq_len=6)
    q = k = v = torch.randn(1, HEADS, 7, HD, dtype=torch.float64)
    with pytest.raises(fl.InputError, match="7 keys exceed max_seq_len=6"):
        attn.attend(q, k, v, key_mask=None, cache=None)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("k", 0, ">= 1"), ("sharing", "layerwise", "'none' | 'headwise' | 'key_value'")],
)
def test_bad_hyperparameters_name_the_field(field: str, value, allowed: str) -> None:
    cfg = dict(kind="encoder", vocab_size=29, dim=DIM, depth=1, num_heads=HEADS)
    with pytest.raises(fl.ConfigError, match=rf"model\.attention\.{field}.*{re.escape(allowed)}"):
        fl.build_model({**cfg, "attention": {"kind": "linformer", field: value}})
