"""Reformer LSH attention: identities against shared-QK full attention, the chunked kernel against
its O(T^2) twin, causality and padding with many buckets, hashing, and config errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

import formerlab as fl
from formerlab.layers.attention import build_attention
from formerlab.layers.attention.reformer import ReformerAttention, ReformerConfig
from formerlab.layers.linear import DenseConfig
from formerlab.ops.lsh import lsh_attention, lsh_attention_reference, lsh_buckets

DIMS = dict(dim=12, num_heads=2, max_seq_len=40, linear=DenseConfig())


def layer(causal: bool = True, **cfg) -> ReformerAttention:
    return build_attention(ReformerConfig(**cfg), causal=causal, **DIMS).double().eval()


def shared_qk_full_attention(
    att: ReformerAttention, x: torch.Tensor, causal: bool, mask: torch.Tensor | None
) -> torch.Tensor:
    """Naive shared-QK softmax attention; a token sees itself only when it has no other key."""
    B, T, _ = x.shape
    q, v = (att._heads(h, att.num_heads) for h in att.qkv_proj(x).chunk(2, dim=-1))
    scores = q @ F.normalize(q, dim=-1).transpose(-1, -2) / math.sqrt(att.head_dim)
    others = ~torch.eye(T, dtype=torch.bool)
    if causal:
        others &= torch.ones(T, T, dtype=torch.bool).tril()
    if mask is not None:
        others = others & mask[:, None, None, :]
    p = torch.softmax(scores.masked_fill(~others, -math.inf), dim=-1).nan_to_num(0.0)
    y = torch.where(others.any(-1, keepdim=True), p @ v, v)  # (B, nh, T, hd)
    return att.out_proj(y.transpose(1, 2).reshape(B, T, -1))


def padding_mask(lengths: list[int], T: int, left: bool) -> torch.Tensor:
    pos = torch.arange(T)
    return torch.stack([(pos >= T - n) if left else (pos < n) for n in lengths])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_one_bucket_equals_shared_qk_full_attention(causal: bool, n_hashes: int) -> None:
    T = 13
    att = layer(causal, n_buckets=1, n_hashes=n_hashes, bucket_size=T)
    x = torch.randn(3, T, DIMS["dim"], dtype=torch.float64)
    mask = padding_mask([13, 9, 1], T, left=causal)
    with torch.no_grad():
        for m in (None, mask):
            got, want = att(x, attention_mask=m), shared_qk_full_attention(att, x, causal, m)
            real = torch.ones(3, T, dtype=torch.bool) if m is None else m
            torch.testing.assert_close(got[real], want[real], rtol=1e-12, atol=1e-12)


def test_small_buckets_differ_from_full_attention() -> None:
    att = layer(True, n_buckets=8, n_hashes=1, bucket_size=2)
    x = torch.randn(2, 16, DIMS["dim"], dtype=torch.float64)
    with torch.no_grad():
        assert (att(x) - shared_qk_full_attention(att, x, True, None)).abs().max() > 1e-3


CASES = [  # (causal, n_hashes, n_buckets, window)
    (True, 1, 4, 2),
    (True, 3, 4, 3),
    (True, 2, 8, 1),
    (False, 1, 2, 5),
    (False, 3, 4, 2),
    (False, 2, 8, 40),
]


@pytest.mark.parametrize(("causal", "n_hashes", "n_buckets", "window"), CASES)
def test_chunked_kernel_equals_quadratic_reference(
    causal: bool, n_hashes: int, n_buckets: int, window: int
) -> None:
    B, H, T, d = 2, 3, 23, 6
    q = torch.randn(B, H, T, d, dtype=torch.float64)
    k, v = F.normalize(q, dim=-1), torch.randn(B, H, T, d, dtype=torch.float64)
    buckets = lsh_buckets(k, torch.randn(n_hashes, d, n_buckets // 2, dtype=torch.float64))
    assert buckets.unique().numel() > 1
    holes = torch.rand(B, T) > 0.3  # arbitrary padding pattern
    for mask in (None, holes):
        kw = dict(window=window, causal=causal, key_mask=mask)
        got, want = (
            lsh_attention(q, k, v, buckets, **kw),
            lsh_attention_reference(q, k, v, buckets, **kw),
        )
        real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
        got, want = got.transpose(1, 2)[real], want.transpose(1, 2)[real]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_identical_rounds_equal_one_round() -> None:
    """Rounds with the same rotations hold the same keys: combined, they equal a single round."""
    B, H, T, d = 1, 2, 19, 4
    q = torch.randn(B, H, T, d, dtype=torch.float64)
    k, v = F.normalize(q, dim=-1), torch.randn_like(q)
    rotation = torch.randn(1, d, 2, dtype=torch.float64)
    one = lsh_attention(q, k, v, lsh_buckets(k, rotation), window=3, causal=True)
    three = lsh_attention(
        q, k, v, lsh_buckets(k, rotation.expand(3, -1, -1)), window=3, causal=True
    )
    torch.testing.assert_close(three, one, rtol=1e-12, atol=1e-12)


def test_rounds_union_sees_more_keys_than_one_round() -> None:
    B, H, T, d = 1, 2, 24, 4
    q = torch.randn(B, H, T, d, dtype=torch.float64)
    k, v = F.normalize(q, dim=-1), torch.randn_like(q)
    rotations = torch.randn(4, d, 4, dtype=torch.float64)
    many = lsh_attention(q, k, v, lsh_buckets(k, rotations), window=2, causal=False)
    first = lsh_attention(q, k, v, lsh_buckets(k, rotations[:1]), window=2, causal=False)
    assert (many - first).abs().max() > 1e-3


def test_never_materialises_a_t_by_t_tensor() -> None:
    B, H, T, d = 1, 1, 512, 8
    q = torch.randn(B, H, T, d)
    k, v = F.normalize(q, dim=-1), torch.randn_like(q)
    buckets = lsh_buckets(k, torch.randn(2, d, 8))
    largest = 0

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            nonlocal largest
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple) else (out,):
                if isinstance(t, torch.Tensor):
                    largest = max(largest, t.numel())
            return out

    with Watch():
        lsh_attention(q, k, v, buckets, window=8, causal=False)
    assert 0 < largest < T * T // 4


@pytest.mark.parametrize("causal", [True, False])
def test_many_buckets_padded_equals_unpadded(causal: bool) -> None:
    att = layer(causal, n_buckets=4, n_hashes=2, bucket_size=2)
    x = torch.randn(1, 14, DIMS["dim"], dtype=torch.float64)
    holes = torch.tensor([[1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    with torch.no_grad():
        padded = att(x, attention_mask=holes)[holes]
        compact = att(x[holes][None])[0]
    torch.testing.assert_close(padded, compact, rtol=1e-12, atol=1e-12)


def test_causal_layer_never_sees_the_future_with_many_buckets() -> None:
    att = layer(True, n_buckets=4, n_hashes=3, bucket_size=2)
    x = torch.randn(2, 20, DIMS["dim"], dtype=torch.float64)
    changed = x.clone()
    changed[:, 11:] = torch.randn_like(changed[:, 11:])  # new hashes, new sorted order
    with torch.no_grad():
        a, b = att(x), att(changed)
    torch.testing.assert_close(a[:, :11], b[:, :11], rtol=0, atol=1e-14)
    assert (a[:, 11:] - b[:, 11:]).abs().max() > 1e-6


def test_gradients_are_finite_when_queries_have_no_key() -> None:
    att = layer(True, n_buckets=8, n_hashes=2, bucket_size=1).train()
    x = torch.randn(2, 9, DIMS["dim"], dtype=torch.float64, requires_grad=True)
    mask = padding_mask([9, 3], 9, left=True)
    att(x, attention_mask=mask)[mask].square().sum().backward()
    grads = [x.grad, *(p.grad for p in att.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_first_token_attends_to_itself_only() -> None:
    att = layer(True, n_buckets=2, n_hashes=2, bucket_size=4)
    x = torch.randn(1, 6, DIMS["dim"], dtype=torch.float64)
    with torch.no_grad():
        v = att._heads(att.qkv_proj(x).chunk(2, dim=-1)[1], att.num_heads)
        y = att.attend(*att.project(x, None, None)[:2], v, key_mask=None, cache=None)
    torch.testing.assert_close(y[:, :, 0], v[:, :, 0], rtol=0, atol=0)


@pytest.mark.parametrize(("causal", "n_hashes", "n_buckets", "window"), CASES[1:3] + CASES[4:5])
def test_kernel_gradients_equal_the_quadratic_reference(
    causal: bool, n_hashes: int, n_buckets: int, window: int
) -> None:
    B, H, T, d = 2, 2, 19, 5
    q, k, v = (torch.randn(B, H, T, d, dtype=torch.float64, requires_grad=True) for _ in "qkv")
    buckets = lsh_buckets(k.detach(), torch.randn(n_hashes, d, n_buckets // 2, dtype=torch.float64))
    mask = torch.rand(B, T) > 0.25
    grad_out = torch.randn(B, H, T, d, dtype=torch.float64) * mask[:, None, :, None]
    grads = []
    for fn in (lsh_attention, lsh_attention_reference):
        y = fn(q, k, v, buckets, window=window, causal=causal, key_mask=mask)
        grads.append(torch.autograd.grad(y, (q, k, v), grad_out))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_hashing_is_the_argmax_over_the_rotations_and_their_negatives() -> None:
    x = torch.randn(2, 3, 50, 8, dtype=torch.float64)
    rotations = torch.randn(4, 8, 5, dtype=torch.float64)
    rotated = torch.einsum("bhtd,rdk->bhrtk", x, rotations)
    want = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)
    assert torch.equal(lsh_buckets(x, rotations), want)


def test_hashing_is_scale_invariant_local_and_in_range() -> None:
    x = F.normalize(torch.randn(1, 1, 400, 16, dtype=torch.float64), dim=-1)
    rotations = torch.randn(3, 16, 4, dtype=torch.float64)
    b = lsh_buckets(x, rotations)
    assert b.shape == (1, 1, 3, 400) and b.min() >= 0 and b.max() <= 7
    assert torch.equal(lsh_buckets(5.0 * x, rotations), b)
    near = lsh_buckets(F.normalize(x + 0.05 * torch.randn_like(x), dim=-1), rotations)
    far = lsh_buckets(F.normalize(torch.randn_like(x), dim=-1), rotations)
    assert (near == b).double().mean() > 0.8 > 0.3 > (far == b).double().mean()
    assert not lsh_buckets(x, rotations[..., :0]).any()  # one bucket


def test_default_bucket_count_and_saved_rotations(tmp_path) -> None:
    assert ReformerConfig(bucket_size=16).buckets_for(256) == 32
    assert ReformerConfig(bucket_size=64).buckets_for(24) == 2
    assert layer(n_hashes=3, bucket_size=8).rotations.shape == (3, 6, 5)
    tiny = dict(kind="decoder_lm", vocab_size=19, dim=8, depth=1, num_heads=2, max_seq_len=16)
    model = fl.build_model({**tiny, "attention": {"kind": "reformer", "bucket_size": 4}}).eval()
    fl.save_pretrained(model, tmp_path / "m")
    loaded = fl.from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(0, 19, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_generate_without_cache_matches_greedy_full_forward() -> None:
    tiny = dict(kind="decoder_lm", vocab_size=19, dim=8, depth=2, num_heads=2, max_seq_len=16)
    model = fl.build_model({**tiny, "attention": {"kind": "reformer", "bucket_size": 2}}).eval()
    assert not model.supports_kv_cache
    prompt = torch.randint(0, 19, (1, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(prompt, max_new_tokens=5)
    with torch.no_grad():
        greedy = model(out[:, :-1]).argmax(-1)[:, 3:]
    assert torch.equal(out[:, 4:], greedy)
    with pytest.raises(fl.InputError, match="no KV cache"):
        model(prompt, cache=model.new_cache())


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("n_hashes", 0, ">= 1"),
        ("bucket_size", -2, ">= 1"),
        ("n_buckets", 3, "even"),
        ("hash_factors", 3, "null, 1 or 2"),
    ],
)
def test_config_errors_name_the_field(field: str, value: int, allowed: str) -> None:
    run = {"model": {"kind": "decoder_lm", "attention": {"kind": "reformer", field: value}}}
    with pytest.raises(
        fl.ConfigError, match=rf"attention\.{field}: invalid value {value}.*{allowed}"
    ):
        fl.load_config({**run, "task": {"kind": "copy"}})


def test_no_cross_attention_form() -> None:
    with pytest.raises(fl.ConfigError, match="supports_cross"):
        build_attention(ReformerConfig(), causal=False, cross=True, **DIMS)


def test_factorized_hash_is_the_mixed_radix_number_of_its_factor_hashes() -> None:
    x = torch.randn(2, 3, 50, 8, dtype=torch.float64)
    first, second = (
        torch.randn(2, 8, 3, dtype=torch.float64),
        torch.randn(2, 8, 5, dtype=torch.float64),
    )
    got = lsh_buckets(x, torch.cat([first, second], dim=-1), (6, 10))
    assert torch.equal(got, lsh_buckets(x, first) * 10 + lsh_buckets(x, second))
    assert got.max() < 60 and len(got.unique()) > 20  # 60 buckets, well used
    with pytest.raises(ValueError, match="rotation columns"):
        lsh_buckets(x, first, (6, 10))


def test_long_sequences_factorize_the_hash_by_default() -> None:
    cfg = ReformerConfig(bucket_size=64)
    assert cfg.factors_for(4096) == (128,)  # 2 * bucket_size buckets: one hash
    assert cfg.factors_for(16384) == (24, 22)  # 512 buckets asked, 528 made from 23 rotations
    for T in (4160, 9000, 16384, 100_000):
        b1, b2 = cfg.factors_for(T)
        assert b1 % 2 == b2 % 2 == 0 and b1 * b2 >= cfg.buckets_for(T)
        assert b1 + b2 < cfg.buckets_for(T) / 4  # far fewer rotations than one hash needs
    assert ReformerConfig(bucket_size=64, hash_factors=1).factors_for(16384) == (512,)
    assert ReformerConfig(bucket_size=4, hash_factors=2, n_buckets=16).factors_for(40) == (4, 4)
    att = build_attention(ReformerConfig(bucket_size=4, n_hashes=2), causal=True, **DIMS)
    assert att.factors == (6, 4) and att.rotations.shape == (
        2,
        6,
        5,
    )  # 20 buckets asked at T 40, 24 made
    x = torch.randn(1, 40, DIMS["dim"])
    assert att(x).shape == x.shape


@pytest.mark.parametrize("after", [True, False])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_chunk_kernel_backward_matches_numerical_gradients(after: bool, dropout_p: float) -> None:
    from formerlab.ops.lsh import _ChunkExp

    N, m, d = 5, 3, 4
    q, k, v = (torch.randn(N, m, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    width = 3 if after else 2
    bias = torch.randn(N, m, width * m, dtype=torch.float64)
    bias[torch.rand_like(bias) < 0.3] = -math.inf
    bias[1, 2] = -math.inf  # a query with no key at all
    probe = torch.randn(N, m, dtype=torch.float64)

    def fn(q, k, v):
        torch.manual_seed(0)  # the same dropout masks on every call
        out, total, top = _ChunkExp.apply(q, k, v, bias, after, dropout_p)
        assert not top.requires_grad
        # the row max is a constant of the backward: check what does not depend on it, the
        # normalised output and the log-normaliser of every row that has a key
        some = total > 0
        lse = torch.where(some, total.clamp_min(1e-300).log() + top, 0.0)
        return out / torch.where(some, total, 1.0)[..., None], lse * probe

    assert torch.autograd.gradcheck(fn, (q, k, v))
    torch.manual_seed(0)
    out, total, top = _ChunkExp.apply(q, k, v, bias, after, 0.0)
    assert torch.isneginf(top[1, 2]) and total[1, 2] == 0 and not out[1, 2].any()


@pytest.mark.parametrize("causal", [True, False])
def test_blocks_of_heads_give_the_same_attention_and_gradients(monkeypatch, causal: bool) -> None:
    from formerlab.ops import heads

    B, H, T, d = 2, 3, 21, 4
    q, v = (torch.randn(B, H, T, d, dtype=torch.float64, requires_grad=True) for _ in range(2))
    buckets = lsh_buckets(
        F.normalize(q.detach(), dim=-1), torch.randn(2, d, 3, dtype=torch.float64)
    )
    mask = padding_mask([21, 13], T, left=causal)
    results = []
    for block_bytes in (2**40, 1):  # everything at once; one head at a time
        monkeypatch.setattr(heads, "BLOCK_BYTES", block_bytes)
        k = F.normalize(q, dim=-1)
        y = lsh_attention(q, k, v, buckets, window=4, causal=causal, key_mask=mask)
        results.append((y, *torch.autograd.grad(y.square().sum(), (q, v))))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
