"""Longformer attention: window >= T is softmax; any window, dilation and set of global tokens
equals a naive masked O(T^2) reference (causal, bidirectional, left and right padding); global
tokens see and are seen by every token; the KV cache decodes exactly like the full forward and drops
old keys once the global tokens are behind it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import formerlab as fl
from formerlab.layers.attention import AttentionConfig, build_attention, longformer
from formerlab.layers.linear import DenseConfig
from formerlab.ops import banded

DIM, HEADS, T = 16, 2, 13


def layer(attn: dict, *, causal: bool, max_seq_len: int = 64) -> torch.nn.Module:
    cfg = AttentionConfig.from_dict({"kind": "longformer", **attn})
    dims = dict(dim=DIM, num_heads=HEADS, causal=causal, max_seq_len=max_seq_len)
    return build_attention(cfg, linear=DenseConfig(), **dims).double().eval()


def naive_allowed(b_mask, *, window, dilation, globals_, causal) -> torch.Tensor:
    """(B, 1, T, T) from the definition; global tokens are counted among the real tokens only."""
    B, n = b_mask.shape
    allowed = torch.zeros(B, 1, n, n, dtype=torch.bool)
    for b in range(B):
        rank = (b_mask[b].long().cumsum(0) - 1).tolist()
        glob = [bool(b_mask[b, j]) and rank[j] in globals_ for j in range(n)]
        for i, j in itertools.product(range(n), range(n)):
            d = i - j
            reach = (d >= 0 if causal else -window * dilation <= d) and d <= window * dilation
            band = reach and d % dilation == 0
            seen = (band or glob[i] or glob[j]) and (j <= i or not causal)
            allowed[b, 0, i, j] = seen and bool(b_mask[b, j])
    return allowed


def naive_longformer(q, k, v, allowed) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    return scores.masked_fill(~allowed, -math.inf).softmax(-1) @ v


def padded_mask(B: int, n: int, *, left: bool) -> torch.Tensor:
    mask = torch.ones(B, n, dtype=torch.bool)
    for b, length in enumerate([n, n - 4, 3][:B]):
        if left:
            mask[b, : n - length] = False
        else:
            mask[b, length:] = False
    return mask


GLOBALS = [
    {"num_global": 0},
    {"num_global": 1},
    {"num_global": 2, "global_positions": [7]},
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("window", "dilation"), [(1, 1), (2, 2), (1, 3)])
@pytest.mark.parametrize("glob", GLOBALS, ids=["none", "cls", "first2+7"])
@pytest.mark.parametrize("pad", [None, "left", "right"])
def test_layer_equals_naive_masked_reference(causal, window, dilation, glob, pad) -> None:
    cfg = {"window": window, "dilation": dilation, **glob}
    attn = layer(cfg, causal=causal)
    x = torch.randn(3, T, DIM, dtype=torch.float64)
    mask = None if pad is None else padded_mask(3, T, left=pad == "left")
    real = torch.ones(3, T, dtype=torch.bool) if mask is None else mask
    globals_ = set(range(glob["num_global"])) | set(glob.get("global_positions", []))
    allowed = naive_allowed(
        real, window=window, dilation=dilation, globals_=globals_, causal=causal
    )
    with torch.no_grad():
        q, k, v = attn.project(x, None, None)
        expected = attn.output(naive_longformer(q, k, v, allowed), x)
        got = attn(x, attention_mask=mask)
    torch.testing.assert_close(got[real], expected[real], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [12, 40])
@pytest.mark.parametrize("glob", GLOBALS, ids=["none", "cls", "first2+7"])
def test_window_at_least_T_equals_softmax(causal: bool, window: int, glob: dict) -> None:
    attn = layer({"window": window, **glob}, causal=causal)
    softmax = build_attention(
        AttentionConfig.from_dict({"kind": "softmax"}), dim=DIM, num_heads=HEADS, causal=causal,
        max_seq_len=64, linear=DenseConfig(),
    ).double().eval()  # fmt: skip
    softmax.load_state_dict(attn.state_dict())
    x = torch.randn(3, T, DIM, dtype=torch.float64)
    for mask in (None, padded_mask(3, T, left=True), padded_mask(3, T, left=False)):
        real = torch.ones(3, T, dtype=torch.bool) if mask is None else mask
        with torch.no_grad():
            got, expected = attn(x, attention_mask=mask), softmax(x, attention_mask=mask)
        torch.testing.assert_close(got[real], expected[real], rtol=1e-12, atol=1e-12)


def test_global_tokens_see_and_are_seen_by_every_token() -> None:
    attn = layer({"window": 1, "num_global": 1}, causal=False)
    x = torch.randn(1, T, DIM, dtype=torch.float64)

    def change(at: int) -> torch.Tensor:
        other = x.clone()
        other[0, at] += 1.0
        with torch.no_grad():
            return (attn(x) - attn(other)).abs().amax(-1)[0]  # (T,)

    far = change(T - 1)  # seen by the global row 0 and the window rows T-2, T-1 only
    assert far[0] > 1e-8 and (far[T - 2 :] > 1e-8).all() and (far[1 : T - 2] == 0).all()
    assert (change(0) > 1e-8).all()  # the global token reaches every row


def test_padding_does_not_move_the_global_tokens() -> None:
    attn = layer({"window": 1, "num_global": 1, "global_positions": [3]}, causal=False)
    seq = torch.randn(1, 6, DIM, dtype=torch.float64)
    x = torch.cat([torch.randn(1, 4, DIM, dtype=torch.float64), seq], 1)  # 4 left pads
    mask = torch.tensor([[False] * 4 + [True] * 6])
    with torch.no_grad():
        torch.testing.assert_close(
            attn(x, attention_mask=mask)[:, 4:], attn(seq), rtol=1e-12, atol=1e-12
        )


def tiny_lm(attn: dict, max_seq_len: int = 24) -> torch.nn.Module:
    return fl.build_model(
        {"kind": "decoder_lm", "vocab_size": 31, "dim": DIM, "depth": 2, "num_heads": HEADS,
         "max_seq_len": max_seq_len, "attention": {"kind": "longformer", **attn}}
    ).double().eval()  # fmt: skip


def decode(model, ids, mask, prefill: int) -> tuple[torch.Tensor, object]:
    cache = model.new_cache()
    part = None if mask is None else mask[:, :prefill]
    steps = [model(ids[:, :prefill], attention_mask=part, cache=cache)]
    for t in range(prefill, ids.size(1)):
        part = None if mask is None else mask[:, : t + 1]
        steps.append(model(ids[:, t : t + 1], attention_mask=part, cache=cache))
    return torch.cat(steps, 1), cache


@pytest.mark.parametrize(
    ("left_pad", "glob"),
    [(False, {"num_global": 1}), (True, {"num_global": 2, "global_positions": [9]})],
)
def test_cached_decode_equals_full_forward(left_pad: bool, glob: dict) -> None:
    model = tiny_lm({"window": 2, "dilation": 2, **glob})
    ids = torch.randint(0, 31, (3, 15))
    mask = padded_mask(3, 15, left=True) if left_pad else None
    real = torch.ones(3, 15, dtype=torch.bool) if mask is None else mask
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        steps, _ = decode(model, ids, mask, prefill=5)
    torch.testing.assert_close(steps[real], full[real], rtol=1e-10, atol=1e-10)


def test_cache_keeps_every_key_until_the_last_global_token_then_only_the_window() -> None:
    model = tiny_lm({"window": 2, "dilation": 2, "num_global": 1, "global_positions": [9]})
    ids = torch.randint(0, 31, (2, 15))
    with torch.no_grad():
        _, early = decode(model, ids[:, :9], None, prefill=3)  # position 9 not reached yet
        _, late = decode(model, ids, None, prefill=3)
    assert all(c["window"].k.size(2) == 9 and c["window"].start == 0 for c in early.layers)
    assert all(c["window"].k.size(2) == 4 and c["window"].start == 11 for c in late.layers)


def test_generate_with_cache_equals_recomputing() -> None:
    model = tiny_lm({"window": 1, "num_global": 2}, max_seq_len=32)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8]]
    assert model.generate(prompts, max_new_tokens=9) == model.generate(
        prompts, max_new_tokens=9, use_cache=False
    )


def test_kernel_never_builds_a_T_by_T_score_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = banded.masked_softmax
    spy = lambda s, a: seen.append(s.shape) or real(s, a)  # noqa: E731
    monkeypatch.setattr(banded, "masked_softmax", spy)  # the window rows
    monkeypatch.setattr(longformer, "masked_softmax", spy)  # the global rows
    n, window = 512, 4
    attn = layer({"window": window, "num_global": 2, "dilation": 2}, causal=False, max_seq_len=n)
    with torch.no_grad():
        attn(torch.randn(1, n, DIM, dtype=torch.float64))
    assert len(seen) == 2
    for shape in seen:
        assert math.prod(shape) // HEADS <= n * (banded.MIN_BLOCK + 2 * window + 2)  # << n * n


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("dilation", 0, "an integer >= 1"),
        ("num_global", -1, "an integer >= 0"),
        ("global_positions", [2, -5], "positions >= 0"),
        ("window", 0, "an integer >= 1"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_field(field, value, allowed) -> None:
    with pytest.raises(fl.ConfigError, match=rf"model\.attention\.{field}: .*allowed: {allowed}"):
        tiny_lm({field: value})


def test_global_position_past_max_seq_len_is_a_config_error() -> None:
    with pytest.raises(fl.ConfigError, match=r"global_positions: 30 is past max_seq_len=24"):
        tiny_lm({"global_positions": [30]})


def test_config_round_trip_and_description() -> None:
    d = {"kind": "longformer", "dropout": 0.0, "bias": True, "window": 3, "dilation": 2,
         "num_global": 1, "global_positions": [5, 9]}  # fmt: skip
    full = AttentionConfig.from_dict(d).to_dict()
    assert {k: full[k] for k in d} == d  # the given fields survive; the rest take their defaults
    assert AttentionConfig.from_dict(full).to_dict() == full
    info = fl.describe("attention", "longformer")
    assert "2004.05150" in info["paper"]
    assert {f["name"] for f in info["fields"]} >= {"window", "dilation", "global_positions"}
