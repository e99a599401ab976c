"""Linear attention (Katharopoulos et al., 2020) and the shared prefix-sum kernel, in float64: the
chunked causal form equals the masked quadratic form (plain and log-space keys, any chunk size,
gradients too), the recurrent state continues a sequence exactly, padded keys contribute nothing, no
T x T tensor is ever formed, and the layer equals a naive per-head reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import formerlab as fl
from formerlab.layers.attention import AttentionConfig, build_attention
from formerlab.layers.linear import DenseConfig
from formerlab.ops.linear_attention import (
    bidirectional_linear_attention,
    causal_linear_attention,
    elu_features,
    quadratic_linear_attention,
)

DIM, HEADS = 16, 2


def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64) * scale


def layer(attn: dict, *, causal: bool, max_seq_len: int = 64) -> torch.nn.Module:
    cfg = AttentionConfig.from_dict(attn)
    dims = dict(dim=DIM, num_heads=HEADS, causal=causal, max_seq_len=max_seq_len)
    return build_attention(cfg, linear=DenseConfig(), **dims).double().eval()


def features(B=2, H=3, T=13, m=5, d=4, S=None):
    qf = elu_features(rand(B, H, T, m))
    kf = elu_features(rand(B, H, S or T, m))
    return qf, kf, rand(B, H, S or T, d)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 13, 64])
def test_causal_prefix_sums_equal_masked_quadratic_form(chunk_size: int) -> None:
    qf, kf, v = features()
    y, _ = causal_linear_attention(qf, kf, v, chunk_size=chunk_size)
    torch.testing.assert_close(y, quadratic_linear_attention(qf, kf, v, causal=True))


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_log_space_keys_equal_the_unstabilised_quadratic_form(chunk_size: int) -> None:
    qf, _, v = features()
    log_k = rand(2, 3, 13, 5, scale=3.0) + torch.linspace(-20, 20, 13, dtype=torch.float64)[:, None]
    y, _ = causal_linear_attention(qf, log_k, v, chunk_size=chunk_size, log_keys=True)
    torch.testing.assert_close(y, quadratic_linear_attention(qf, log_k.exp(), v, causal=True))


def test_log_space_keys_stay_finite_where_plain_exponentials_overflow() -> None:
    qf, _, v = features()
    log_k = rand(2, 3, 13, 5) + 1000.0  # exp overflows even in float64
    assert not torch.isfinite(log_k.exp()).all()
    y, state = causal_linear_attention(qf, log_k, v, chunk_size=4, log_keys=True)
    reference = quadratic_linear_attention(qf, (log_k - 1000.0).exp(), v, causal=True)
    torch.testing.assert_close(y, reference)
    assert torch.isfinite(state.kv).all() and torch.isfinite(state.k).all()


def test_gradients_of_prefix_form_equal_quadratic_gradients() -> None:
    qf, log_k, v = (
        t.requires_grad_() for t in (rand(1, 2, 9, 4), rand(1, 2, 9, 4), rand(1, 2, 9, 3))
    )
    y, _ = causal_linear_attention(qf.exp(), log_k, v, chunk_size=2, log_keys=True)
    fast = torch.autograd.grad(y.sin().sum(), (qf, log_k, v))
    ref = quadratic_linear_attention(qf.exp(), log_k.exp(), v, causal=True)
    slow = torch.autograd.grad(ref.sin().sum(), (qf, log_k, v))
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("log_keys", [False, True])
def test_recurrent_state_continues_the_sequence_exactly(log_keys: bool) -> None:
    qf, kf, v = features(T=17)
    kf = kf.log() * 4 if log_keys else kf
    full, _ = causal_linear_attention(qf, kf, v, chunk_size=4, log_keys=log_keys)
    parts, state, start = [], None, 0
    for size in (5, 1, 1, 3, 7):
        piece = slice(start, start + size)
        y, state = causal_linear_attention(
            qf[:, :, piece], kf[:, :, piece], v[:, :, piece], state=state, log_keys=log_keys
        )
        parts.append(y)
        start += size
    torch.testing.assert_close(torch.cat(parts, dim=2), full, rtol=1e-12, atol=1e-12)


def test_masked_keys_contribute_nothing_and_keyless_queries_get_zero() -> None:
    qf, kf, v = features(T=10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :3] = False  # left padding: queries 0..2 of row 0 see no key
    mask[1, 6:] = False
    keep = mask[:, None, :, None]
    y, _ = causal_linear_attention(qf, kf * keep, v * keep, chunk_size=3)
    torch.testing.assert_close(y, quadratic_linear_attention(qf, kf, v, causal=True, key_mask=mask))
    assert (y[0, :, :3] == 0).all() and torch.isfinite(y).all()
    log_k = kf.log().masked_fill(~keep, -math.inf)
    y_log, _ = causal_linear_attention(qf, log_k, v * keep, chunk_size=3, log_keys=True)
    torch.testing.assert_close(y_log, y)


@pytest.mark.parametrize("log_keys", [False, True])
def test_bidirectional_form_equals_quadratic_form(log_keys: bool) -> None:
    qf, kf, v = features(T=6, S=11)
    mask = torch.rand(2, 11) > 0.3
    mask[:, 0] = True
    keep = mask[:, None, :, None]
    keys = kf.log().masked_fill(~keep, -math.inf) if log_keys else kf * keep
    y = bidirectional_linear_attention(qf, keys, v * keep, log_keys=log_keys)
    reference = quadratic_linear_attention(qf, kf, v, causal=False, key_mask=mask)
    torch.testing.assert_close(y, reference)


class TensorShapes(TorchDispatchMode):
    """Records the shape of every tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[torch.Size] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [t.shape for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def widest_pair(shapes: list[torch.Size]) -> int:
    """The largest second-largest dimension: >= T iff some tensor had two dims of size >= T."""
    return max(sorted(s)[-2] for s in shapes if len(s) >= 2)


@pytest.mark.parametrize("kind", ["linear", "performer"])
@pytest.mark.parametrize("causal", [True, False])
def test_no_t_by_t_tensor_is_ever_formed(kind: str, causal: bool) -> None:
    T = 160
    attn = layer(
        {"kind": kind, "chunk_size": 16, **({"num_features": 12} if kind == "performer" else {})},
        causal=causal,
        max_seq_len=T,
    )
    x = torch.randn(1, T, DIM, dtype=torch.float64)
    with torch.no_grad(), TensorShapes() as seen:
        attn(x, attention_mask=torch.ones(1, T, dtype=torch.bool))
    assert widest_pair(seen.shapes) < T
    qf, kf, v = features(B=1, H=2, T=T)
    with TensorShapes() as control:  # the check can fail: the quadratic twin forms T x T
        quadratic_linear_attention(qf, kf, v, causal=causal)
    assert widest_pair(control.shapes) >= T


def naive_layer(attn: torch.nn.Module, x: torch.Tensor, *, causal: bool, mask=None):
    """Per-head phi(Q) phi(K)^T, masked, row-normalised, the O(T^2) way."""
    B, T, _ = x.shape
    q, k, v = (
        t.reshape(B, T, HEADS, DIM // HEADS).transpose(1, 2)
        for t in attn.qkv_proj(x).split(DIM, dim=-1)
    )
    scores = torch.einsum("bhid,bhjd->bhij", F.elu(q) + 1, F.elu(k) + 1)
    allowed = torch.ones(T, T, dtype=torch.bool)
    allowed = allowed.tril() if causal else allowed
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    weights = scores * allowed
    y = weights @ v / weights.sum(-1, keepdim=True)
    return attn.out_proj(y.transpose(1, 2).reshape(B, T, DIM))


@pytest.mark.parametrize("causal", [True, False])
def test_layer_equals_naive_reference(causal: bool) -> None:
    attn = layer({"kind": "linear", "chunk_size": 3}, causal=causal)
    x = rand(3, 10, DIM)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False  # right padding: every real query sees a key
    with torch.no_grad():
        for m in (None, mask):
            torch.testing.assert_close(
                attn(x, attention_mask=m), naive_layer(attn, x, causal=causal, mask=m)
            )


def test_layer_decode_with_running_state_equals_full_forward_and_memory_is_constant() -> None:
    attn = layer({"kind": "linear", "chunk_size": 2}, causal=True)
    x = rand(2, 15, DIM)
    with torch.no_grad():
        full = attn(x)
        cache: dict = {}
        steps = [attn(x[:, :6], cache=cache)]
        sizes = []
        for t in range(6, 15):
            steps.append(attn(x[:, t : t + 1], cache=cache))
            sizes.append(sum(v.numel() for v in vars(cache["prefix_state"]).values()))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-12, atol=1e-12)
    assert len(set(sizes)) == 1  # the state does not grow with the number of tokens
    assert sizes[0] == 2 * HEADS * ((DIM // HEADS) ** 2 + DIM // HEADS + 1)


def test_padded_keys_change_nothing_in_a_causal_layer() -> None:
    attn = layer({"kind": "linear", "chunk_size": 4}, causal=True)
    x = rand(2, 9, DIM)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False
    other = x.clone()
    other[0, :3] = rand(3, DIM) * 10
    with torch.no_grad():
        a, b = attn(x, attention_mask=mask), attn(other, attention_mask=mask)
    torch.testing.assert_close(a[0, 3:], b[0, 3:], rtol=0, atol=1e-12)
    assert torch.isfinite(a).all()


def test_cross_attention_equals_quadratic_form() -> None:
    cfg = AttentionConfig.from_dict({"kind": "linear"})
    dims = dict(dim=DIM, num_heads=HEADS, causal=False, max_seq_len=32, linear=DenseConfig())
    attn = build_attention(cfg, cross=True, **dims).double().eval()
    x, ctx = rand(2, 5, DIM), rand(2, 8, DIM)
    with torch.no_grad():
        y = attn(x, context=ctx)
        q = attn.q_proj(x).view(2, 5, HEADS, -1).transpose(1, 2)
        k, v = (t.view(2, 8, HEADS, -1).transpose(1, 2) for t in attn.kv_proj(ctx).split(DIM, -1))
        ref = quadratic_linear_attention(elu_features(q), elu_features(k), v, causal=False)
        torch.testing.assert_close(y, attn.out_proj(ref.transpose(1, 2).reshape(2, 5, DIM)))


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("chunk_size", 0, "allowed: >= 1"), ("dropout", 0.1, "allowed: 0.0")],
)
def test_bad_config_names_field_value_and_allowed(field: str, value, allowed: str) -> None:
    cfg = {"kind": "decoder_lm", "vocab_size": 11, "dim": DIM, "num_heads": HEADS}
    cfg["attention"] = {"kind": "linear", field: value}
    with pytest.raises(fl.ConfigError, match=rf"attention\.{field}: {value}; {allowed}"):
        fl.build_model(cfg)


@pytest.mark.parametrize("kind", ["linear", "performer"])
def test_generate_left_padded_prompts_with_state_equals_recomputing(kind: str) -> None:
    attn = {"kind": kind, "chunk_size": 2}
    model = (
        fl.build_model(
            {
                "kind": "decoder_lm",
                "vocab_size": 17,
                "dim": DIM,
                "depth": 2,
                "num_heads": HEADS,
                "max_seq_len": 24,
                "attention": attn,
            }
        )
        .double()
        .eval()
    )
    prompts = [[3, 1, 4, 1, 5, 9], [2, 7], [1, 8, 2, 8]]
    cached = model.generate(prompts, max_new_tokens=8)
    recomputed = model.generate(prompts, max_new_tokens=8, use_cache=False)
    assert cached == recomputed
    alone = [model.generate([p], max_new_tokens=8)[0] for p in prompts]
    assert cached == alone
