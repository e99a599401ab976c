"""Local (sliding-window) attention: window >= T is softmax; narrower windows equal a naive masked
O(T^2) reference (causal, bidirectional, padded); the blocked kernel equals its dense twin, never
builds a T x T score matrix, and the windowed KV cache decodes exactly like the full forward."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import formerlab as fl
from formerlab.layers.attention import AttentionConfig, build_attention
from formerlab.layers.linear import DenseConfig
from formerlab.ops import banded
from formerlab.ops.banded import ExtraKeys, banded_attention, banded_attention_reference

DIM, HEADS, HD = 16, 2, 8


def layer(attn: dict, *, causal: bool, max_seq_len: int = 64) -> torch.nn.Module:
    cfg = AttentionConfig.from_dict(attn)
    dims = dict(dim=DIM, num_heads=HEADS, causal=causal, max_seq_len=max_seq_len)
    return build_attention(cfg, linear=DenseConfig(), **dims).double().eval()


def naive_local(q, k, v, *, window: int, causal: bool, key_mask=None) -> torch.Tensor:
    """Written the plain way: a (T, T) mask from the definition, masked scores, softmax per row."""
    T = q.size(2)
    allowed = torch.zeros(q.size(0), 1, T, T, dtype=torch.bool)
    for b, i, j in itertools.product(range(q.size(0)), range(T), range(T)):
        near = 0 <= i - j <= window if causal else abs(i - j) <= window
        allowed[b, 0, i, j] = near and (key_mask is None or bool(key_mask[b, j]))
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))).masked_fill(~allowed, -math.inf)
    return scores.softmax(-1) @ v


def padded_mask(B: int, T: int, *, left: bool) -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.bool)
    lengths = [T, T - 4, 3][:B]
    for b, n in enumerate(lengths):
        if left:
            mask[b, : T - n] = False
        else:
            mask[b, n:] = False
    return mask


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 3, 6])
@pytest.mark.parametrize("pad", [None, "left", "right"])
def test_layer_equals_naive_masked_reference(causal: bool, window: int, pad: str | None) -> None:
    attn = layer({"kind": "local", "window": window}, causal=causal)
    x = torch.randn(3, 13, DIM, dtype=torch.float64)
    mask = None if pad is None else padded_mask(3, 13, left=pad == "left")
    with torch.no_grad():
        q, k, v = attn.project(x, None, None)
        expected = attn.output(naive_local(q, k, v, window=window, causal=causal, key_mask=mask), x)
        got = attn(x, attention_mask=mask)
    real = torch.ones(3, 13, dtype=torch.bool) if mask is None else mask
    torch.testing.assert_close(got[real], expected[real], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [12, 13, 100])
def test_window_at_least_T_equals_softmax(causal: bool, window: int) -> None:
    local = layer({"kind": "local", "window": window}, causal=causal)
    softmax = layer({"kind": "softmax"}, causal=causal)
    softmax.load_state_dict(local.state_dict())
    x = torch.randn(3, 13, DIM, dtype=torch.float64)
    for mask in (None, padded_mask(3, 13, left=True), padded_mask(3, 13, left=False)):
        real = torch.ones(3, 13, dtype=torch.bool) if mask is None else mask
        with torch.no_grad():
            got, expected = local(x, attention_mask=mask), softmax(x, attention_mask=mask)
        torch.testing.assert_close(got[real], expected[real], rtol=1e-12, atol=1e-12)


def test_narrow_window_differs_from_softmax() -> None:
    local = layer({"kind": "local", "window": 2}, causal=False)
    softmax = layer({"kind": "softmax"}, causal=False)
    softmax.load_state_dict(local.state_dict())
    x = torch.randn(2, 13, DIM, dtype=torch.float64)
    with torch.no_grad():
        assert (local(x) - softmax(x)).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_an_input_reaches_only_the_rows_within_the_window(causal: bool) -> None:
    window, T, j = 3, 16, 8
    attn = layer({"kind": "local", "window": window}, causal=causal)
    x = torch.randn(1, T, DIM, dtype=torch.float64)
    changed = x.clone()
    changed[0, j] += 1.0
    with torch.no_grad():
        diff = (attn(x) - attn(changed)).abs().amax(-1)[0]  # (T,)
    i = torch.arange(T)
    inside = ((j <= i) & (i <= j + window)) if causal else ((i - j).abs() <= window)
    assert (diff[inside] > 1e-8).all()
    assert (diff[~inside] == 0).all()


def random_case(B=2, H=3, Tq=11, S=11, G=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, HD, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, H, S, HD, generator=gen, dtype=torch.float64) for _ in range(2))
    key_valid = torch.rand(B, S, generator=gen) > 0.3
    extra = None
    if G:
        gk, gv = (torch.randn(B, H, G, HD, generator=gen, dtype=torch.float64) for _ in range(2))
        extra = ExtraKeys(gk, gv, torch.rand(B, 1, Tq, G, generator=gen) > 0.4)
    return q, k, v, key_valid, extra


CASES = [  # (Tq, S, q_start, k_start, before, after, dilation, block)
    (11, 11, 0, 0, 2, 2, 1, None),
    (11, 11, 0, 0, 3, 0, 1, 4),
    (11, 11, 0, 0, 1, 5, 2, None),
    (1, 6, 9, 4, 5, 0, 1, None),  # a decode step: cache kept keys 4..9
    (4, 9, 7, 2, 3, 0, 3, 2),
    (7, 20, 5, 0, 30, 30, 1, None),
    (13, 13, 0, 0, 0, 0, 1, None),
]


@pytest.mark.parametrize(("Tq", "S", "qs", "ks", "before", "after", "dilation", "block"), CASES)
@pytest.mark.parametrize("G", [0, 2])
def test_blocked_kernel_equals_dense_twin(Tq, S, qs, ks, before, after, dilation, block, G) -> None:
    q, k, v, key_valid, extra = random_case(Tq=Tq, S=S, G=G)
    band = dict(before=before, after=after, q_start=qs, k_start=ks, dilation=dilation)
    got = banded_attention(q, k, v, key_valid=key_valid, extra=extra, block=block, **band)
    expected = banded_attention_reference(q, k, v, key_valid=key_valid, extra=extra, **band)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_kernel_gradients_equal_the_dense_twin() -> None:
    q, k, v, key_valid, extra = random_case(G=2)
    inputs = [t.requires_grad_() for t in (q, k, v, extra.k, extra.v)]
    band = dict(before=2, after=1, dilation=2, key_valid=key_valid)
    grads = []
    for fn in (banded_attention, banded_attention_reference):
        y = fn(q, k, v, extra=ExtraKeys(inputs[3], inputs[4], extra.valid), **band)
        grads.append(torch.autograd.grad(y.sin().sum(), inputs))
    for a, b in zip(*grads, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_rows_without_keys_are_zero_not_nan() -> None:
    q, k, v, _, _ = random_case()
    key_valid = torch.zeros(2, 11, dtype=torch.bool)
    key_valid[:, 0] = True  # only row 0 and 1 (window 1) can see a key
    y = banded_attention(q, k, v, before=1, after=0, key_valid=key_valid)
    assert torch.isfinite(y).all() and (y[:, :, 2:] == 0).all() and (y[:, :, :2] != 0).all()


def test_kernel_never_builds_a_T_by_T_score_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = banded.masked_softmax
    monkeypatch.setattr(banded, "masked_softmax", lambda s, a: seen.append(s.shape) or real(s, a))
    T, window = 512, 4
    attn = layer({"kind": "local", "window": window}, causal=False, max_seq_len=T)
    with torch.no_grad():
        attn(torch.randn(1, T, DIM, dtype=torch.float64))
    (shape,) = seen
    per_head = math.prod(shape) // HEADS
    assert shape[-1] < T and per_head <= T * (banded.MIN_BLOCK + 2 * window)


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("left_pad", [False, True])
def test_cached_decode_equals_full_forward_and_keeps_only_the_window(window, left_pad) -> None:
    model = fl.build_model(
        {"kind": "decoder_lm", "vocab_size": 31, "dim": DIM, "depth": 2, "num_heads": HEADS,
         "max_seq_len": 24, "attention": {"kind": "local", "window": window}}
    ).double().eval()  # fmt: skip
    ids = torch.randint(0, 31, (3, 15))
    mask = padded_mask(3, 15, left=True) if left_pad else None
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.new_cache()
        steps = [
            model(ids[:, :6], attention_mask=None if mask is None else mask[:, :6], cache=cache)
        ]
        for t in range(6, 15):
            m = None if mask is None else mask[:, : t + 1]
            steps.append(model(ids[:, t : t + 1], attention_mask=m, cache=cache))
            assert all(layer_cache["window"].k.size(2) <= window for layer_cache in cache.layers)
    real = torch.ones(3, 15, dtype=torch.bool) if mask is None else mask
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], rtol=1e-10, atol=1e-10)


def test_generate_with_the_windowed_cache_equals_recomputing() -> None:
    model = fl.build_model(
        {"kind": "decoder_lm", "vocab_size": 31, "dim": DIM, "depth": 2, "num_heads": HEADS,
         "max_seq_len": 32, "attention": {"kind": "local", "window": 2}}
    ).double().eval()  # fmt: skip
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    cached = model.generate(prompts, max_new_tokens=10)
    plain = model.generate(prompts, max_new_tokens=10, use_cache=False)
    assert cached == plain


def test_dropout_only_in_training() -> None:
    attn = layer({"kind": "local", "window": 2, "dropout": 0.5}, causal=True)
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(attn(x), attn(x))
        attn.train()
        a, b = attn(x), attn(x)
    assert torch.isfinite(a).all() and not torch.equal(a, b)


@pytest.mark.parametrize("window", [0, -3])
def test_bad_window_is_a_config_error_naming_the_field(window: int) -> None:
    with pytest.raises(fl.ConfigError, match=rf"model\.attention\.window: {window}; allowed"):
        fl.build_model({"kind": "decoder_lm", "attention": {"kind": "local", "window": window}})


def test_bad_band_is_an_input_error() -> None:
    q, k, v, _, _ = random_case()
    with pytest.raises(fl.InputError, match="before=-1"):
        banded_attention(q, k, v, before=-1, after=0)
    with pytest.raises(fl.InputError, match="dilation=0"):
        banded_attention_reference(q, k, v, before=1, after=0, dilation=0)


def test_config_round_trip_and_capabilities() -> None:
    d = {"kind": "local", "window": 5, "dropout": 0.1, "bias": False}
    full = AttentionConfig.from_dict(d).to_dict()
    assert {k: full[k] for k in d} == d  # the given fields survive; the rest take their defaults
    assert AttentionConfig.from_dict(full).to_dict() == full
    info = fl.describe("attention", "local")
    assert "2011.04006" in info["paper"]
    assert info["capabilities"]["supports_causal"] and info["capabilities"]["supports_kv_cache"]


@pytest.mark.parametrize("per_head_valid", [False, True])
def test_one_head_at_a_time_equals_the_dense_twin(monkeypatch, per_head_valid: bool) -> None:
    from formerlab.ops import heads

    monkeypatch.setattr(heads, "BLOCK_BYTES", 1)  # every head its own block
    q, k, v, key_valid, extra = random_case(G=2)
    valid = extra.valid.expand(-1, q.size(1), -1, -1).clone() if per_head_valid else extra.valid
    if per_head_valid:
        valid[:, 1] = ~valid[:, 1]  # heads differ: a block must get its own rows
    inputs = [t.requires_grad_() for t in (q, k, v, extra.k, extra.v)]
    band = dict(before=2, after=1, dilation=2, key_valid=key_valid)
    results = []
    for fn in (banded_attention, banded_attention_reference):
        y = fn(q, k, v, extra=ExtraKeys(inputs[3], inputs[4], valid), **band)
        results.append((y, *torch.autograd.grad(y.sin().sum(), inputs)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
