"""Primer's multi-DConv-head attention: identity against softmax, the causal convolution, decode."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import formerlab as fl
from formerlab.layers.attention import SoftmaxAttention, SoftmaxAttentionConfig, build_attention
from formerlab.layers.attention.mdha import MDHAConfig, MDHAttention, causal_depthwise_conv
from formerlab.layers.linear import DenseConfig

DIMS = dict(dim=12, num_heads=3, max_seq_len=32, linear=DenseConfig())


def layer(causal: bool = True, **cfg) -> MDHAttention:
    return build_attention(MDHAConfig(**cfg), causal=causal, **DIMS).double().eval()


def softmax_twin(mdha: MDHAttention, causal: bool) -> SoftmaxAttention:
    cfg = SoftmaxAttentionConfig(num_kv_heads=mdha.config.num_kv_heads)
    twin = build_attention(cfg, causal=causal, **DIMS).double().eval()
    twin.load_state_dict(mdha.state_dict(), strict=False)  # same q/k/v and output projections
    return twin


def padding_mask(lengths: list[int], T: int, left: bool) -> torch.Tensor:
    pos = torch.arange(T)
    rows = [(pos >= T - n) if left else (pos < n) for n in lengths]
    return torch.stack(rows)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_identity_kernel_equals_softmax(causal: bool, num_kv_heads: int | None) -> None:
    mdha = layer(causal, kernel_init="identity", num_kv_heads=num_kv_heads)
    twin = softmax_twin(mdha, causal)
    x = torch.randn(2, 9, DIMS["dim"], dtype=torch.float64)
    mask = padding_mask([9, 6], 9, left=causal)
    with torch.no_grad():
        torch.testing.assert_close(mdha(x), twin(x), rtol=1e-12, atol=1e-12)
        got, want = mdha(x, attention_mask=mask), twin(x, attention_mask=mask)
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-12, atol=1e-12)


def test_random_kernel_differs_from_softmax() -> None:
    mdha = layer()
    x = torch.randn(2, 9, DIMS["dim"], dtype=torch.float64)
    with torch.no_grad():
        assert (mdha(x) - softmax_twin(mdha, True)(x)).abs().max() > 1e-3


def test_identity_kernel_model_equals_softmax_model() -> None:
    tiny = dict(kind="decoder_lm", vocab_size=23, dim=12, depth=2, num_heads=3, max_seq_len=16)
    mdha = fl.build_model({**tiny, "attention": {"kind": "mdha", "kernel_init": "identity"}})
    base = fl.build_model(tiny)
    missing, unexpected = base.load_state_dict(mdha.state_dict(), strict=False)
    assert not missing and all("conv_" in name for name in unexpected)
    ids = torch.randint(0, 23, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(mdha.double()(ids), base.double()(ids), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_conv_matches_torch_conv1d_with_left_padding(K: int) -> None:
    B, T, C = 2, 10, 7
    x = torch.randn(B, T, C, dtype=torch.float64)
    w, b = torch.randn(C, K, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    ours = causal_depthwise_conv(x, w, b, x.new_zeros(B, K - 1, C))
    ref = F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), w[:, None, :], b, groups=C)
    torch.testing.assert_close(ours, ref.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_conv_sees_exactly_the_two_previous_positions() -> None:
    x = torch.randn(1, 8, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64)
    y = causal_depthwise_conv(x, w, torch.zeros(4, dtype=torch.float64), x.new_zeros(1, 2, 4))
    (grad,) = torch.autograd.grad(y[0, 5].sum(), x)
    touched = grad[0].abs().sum(-1) > 0
    assert touched.tolist() == [False, False, False, True, True, True, False, False]


def test_layer_never_sees_the_future() -> None:
    mdha = layer(causal=True)
    x = torch.randn(2, 10, DIMS["dim"], dtype=torch.float64)
    changed = x.clone()
    changed[:, 6:] += torch.randn_like(changed[:, 6:])
    with torch.no_grad():
        a, b = mdha(x), mdha(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-14)
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-6


@pytest.mark.parametrize("num_kv_heads", [None, 1])
@pytest.mark.parametrize("left_pad", [False, True])
def test_cached_decode_in_uneven_chunks_equals_full_forward(
    num_kv_heads: int | None, left_pad: bool
) -> None:
    mdha = layer(num_kv_heads=num_kv_heads)
    T = 12
    x = torch.randn(2, T, DIMS["dim"], dtype=torch.float64)
    mask = padding_mask([T, 8], T, left=True) if left_pad else None
    with torch.no_grad():
        full = mdha(x, attention_mask=mask)
        cache, outs, start = {}, [], 0
        for size in (3, 1, 4, 1, 1, 2):
            part_mask = None if mask is None else mask[:, : start + size]
            outs.append(mdha(x[:, start : start + size], attention_mask=part_mask, cache=cache))
            start += size
    assert start == T and cache["conv_past"].shape == (2, 2, mdha.conv_weight.size(0))
    real = torch.ones(2, T, dtype=torch.bool) if mask is None else mask  # pads' outputs are unused
    torch.testing.assert_close(torch.cat(outs, 1)[real], full[real], rtol=1e-12, atol=1e-12)


def test_left_padded_generation_equals_unpadded() -> None:
    tiny = dict(kind="decoder_lm", vocab_size=23, dim=12, depth=2, num_heads=3, max_seq_len=16)
    model = fl.build_model({**tiny, "attention": {"kind": "mdha"}}).double().eval()
    prompts = [[3, 4, 5, 6, 7], [8, 9]]
    batch = model.generate(prompts, max_new_tokens=4)
    alone = [model.generate([p], max_new_tokens=4)[0] for p in prompts]
    assert batch == alone
    with torch.no_grad():  # logits too, not only the greedy tokens
        ids = torch.tensor([[0, 0, 0, 8, 9]])
        mask = ids.new_tensor([[False, False, False, True, True]])
        padded = model(ids, mask)[0, 3:]
        torch.testing.assert_close(padded, model(ids[:, 3:])[0], rtol=1e-10, atol=1e-10)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(fl.ConfigError, match=r"attention\.kernel_size: invalid value 0"):
        fl.load_config(
            {
                "model": {"kind": "decoder_lm", "attention": {"kind": "mdha", "kernel_size": 0}},
                "task": {"kind": "copy"},
            }
        )
    with pytest.raises(fl.ConfigError, match=r"kernel_init.*'learned'.*'identity'"):
        MDHAConfig.from_dict({"kind": "mdha", "kernel_init": "learned"})


def test_no_cross_attention_form() -> None:
    with pytest.raises(fl.ConfigError, match="cross_attention.*supports_cross"):
        fl.build_model(
            {
                "kind": "encoder_decoder",
                "vocab_size": 11,
                "dim": 8,
                "num_heads": 2,
                "cross_attention": {"kind": "mdha"},
            }
        )
    with pytest.raises(fl.ConfigError, match="supports_cross"):
        build_attention(MDHAConfig(), causal=False, cross=True, **DIMS)
