"""Top-k hard attention (AxFormer): k >= T is softmax, k = 1 is argmax attention, any k equals a naive
per-query reference, and only the kept keys receive gradient."""

from __future__ import annotations

import pytest
import torch

import formerlab as fl
from formerlab.layers.attention import AttentionConfig, build_attention
from formerlab.layers.linear import DenseConfig
from formerlab.ops.scores import keep_top_k

DIM, HEADS, HD = 16, 2, 8


def layer(attn: dict, *, causal: bool) -> torch.nn.Module:
    cfg = AttentionConfig.from_dict(attn)
    dims = dict(dim=DIM, num_heads=HEADS, causal=causal, max_seq_len=16, linear=DenseConfig())
    return build_attention(cfg, **dims).double().eval()


def qkv(T: int = 9) -> list[torch.Tensor]:
    return [torch.randn(2, HEADS, T, HD, dtype=torch.float64) for _ in range(3)]


def allowed_keys(T: int, causal: bool, key_mask: torch.Tensor) -> torch.Tensor:
    allowed = key_mask[:, None, :].expand(-1, T, T)  # (B, Tq, Tk)
    return allowed & torch.ones(T, T, dtype=torch.bool).tril() if causal else allowed


def test_keep_top_k_keeps_exactly_the_k_largest() -> None:
    scores = torch.randn(5, 4, 12, dtype=torch.float64)
    kept = keep_top_k(scores, 3)
    assert (torch.isfinite(kept).sum(-1) == 3).all()
    threshold = scores.sort(-1, descending=True).values[..., 2:3]
    torch.testing.assert_close(kept, scores.masked_fill(scores < threshold, float("-inf")))
    assert keep_top_k(scores, 12) is scores


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("top_k", [9, 50])
def test_k_at_least_T_equals_softmax_attention(causal: bool, top_k: int) -> None:
    hard = layer({"kind": "hard_topk", "top_k": top_k, "num_kv_heads": 1}, causal=causal)
    softmax = layer({"kind": "softmax", "num_kv_heads": 1}, causal=causal)
    softmax.load_state_dict(hard.state_dict())
    x = torch.randn(3, 9, DIM, dtype=torch.float64)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:], mask[2, :3] = False, False
    for m in (None, mask):
        with torch.no_grad():
            torch.testing.assert_close(
                hard(x, attention_mask=m), softmax(x, attention_mask=m), rtol=1e-12, atol=1e-12
            )


@pytest.mark.parametrize("causal", [False, True])
def test_k_1_equals_argmax_attention(causal: bool) -> None:
    attn = layer({"kind": "hard_topk", "top_k": 1}, causal=causal)
    q, k, v = qkv()
    got = attn.attend(q, k, v, key_mask=None, cache=None)
    scores = q @ k.transpose(-2, -1)
    if causal:
        scores = scores.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
    best = scores.argmax(-1)  # (B, nh, T)
    want = torch.gather(v, 2, best[..., None].expand(-1, -1, -1, HD))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def naive_top_k_attention(q, k, v, allowed, top_k) -> torch.Tensor:
    """One query at a time: its allowed keys, the top_k best of them, softmax over those."""
    out = torch.zeros_like(q)
    for b in range(q.size(0)):
        for h in range(q.size(1)):
            for i in range(q.size(2)):
                keys = allowed[b, i].nonzero().flatten()
                s = k[b, h, keys] @ q[b, h, i] / HD**0.5
                best = s.topk(min(top_k, len(keys))).indices
                out[b, h, i] = torch.softmax(s[best], 0) @ v[b, h, keys[best]]
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_equals_naive_reference(causal: bool) -> None:
    attn = layer({"kind": "hard_topk", "top_k": 3}, causal=causal)
    q, k, v = qkv()
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, 6:] = False
    got = attn.attend(q, k, v, key_mask=key_mask, cache=None)
    want = naive_top_k_attention(q, k, v, allowed_keys(9, causal, key_mask), 3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_only_the_kept_keys_get_gradient() -> None:
    attn = layer({"kind": "hard_topk", "top_k": 2}, causal=False)
    q = torch.randn(1, 1, 1, HD, dtype=torch.float64)
    k = torch.randn(1, 1, 7, HD, dtype=torch.float64)
    v = torch.randn(1, 1, 7, HD, dtype=torch.float64, requires_grad=True)
    attn.attend(q, k, v, key_mask=None, cache=None).sum().backward()
    kept = (q @ k.transpose(-2, -1)).flatten().topk(2).indices
    has_grad = v.grad[0, 0].abs().sum(-1) > 0
    assert set(has_grad.nonzero().flatten().tolist()) == set(kept.tolist())


def test_top_k_below_1_is_a_config_error() -> None:
    cfg = dict(kind="decoder_lm", vocab_size=29, dim=DIM, depth=1, num_heads=HEADS)
    with pytest.raises(fl.ConfigError, match=r"model\.attention\.top_k.*0.*>= 1"):
        fl.build_model({**cfg, "attention": {"kind": "hard_topk", "top_k": 0}})


def test_k_at_least_S_cross_attention_equals_softmax_cross_attention(
    cross_twins, cross_outputs
) -> None:
    ours, softmax = cross_twins({"kind": "hard_topk", "top_k": 9})
    got, want = cross_outputs(ours, softmax)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
