"""The chunk-parallel causal linear-attention kernel against its sequential twin (one chunk after
another) and the quadratic form, in float64 with tight tolerances: outputs, gradients and the final
``PrefixState`` (the one decoding continues from) for plain features and log-features, T not a
multiple of C, T < C, an incoming state, masked keys and split segments; the decayed prefix sum over
chunks against its recurrence; float32 stays finite with key log-features of +-80 (where the
unstabilised cross-chunk factors overflow); and the operator count does not grow with the number of
chunks (no Python loop over chunks)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from formerlab.ops import linear_attention as la
from formerlab.ops.linear_attention import (
    PrefixState,
    causal_linear_attention,
    elu_features,
    quadratic_linear_attention,
    segment_chunks,
    sequential_causal_linear_attention,
)

TIGHT = dict(rtol=1e-12, atol=1e-12)


def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64) * scale


def inputs(T: int, *, log_keys: bool, B=2, H=2, m=5, d=4, spread: float = 0.0):
    """Leaf tensors: query features, key (log-)features, values. ``spread``: a trend of the key
    log-features from ``-spread`` to ``+spread`` over the positions (large shifts between chunks)."""
    qf = elu_features(rand(B, H, T, m))
    if log_keys:
        trend = torch.linspace(-spread, spread, T, dtype=torch.float64)[:, None]
        kf = rand(B, H, T, m, scale=2.0) + trend
    else:
        kf = elu_features(rand(B, H, T, m))
    return [t.requires_grad_() for t in (qf, kf, rand(B, H, T, d))]


def run(kernel, qf, kf, v, *, chunk_size: int, log_keys: bool, prefix: int = 0):
    """``kernel`` on positions ``prefix:``, continuing from the state the sequential kernel leaves
    after positions ``:prefix`` (so gradients flow through the incoming state too)."""
    state = None
    if prefix:
        head = (t[:, :, :prefix] for t in (qf, kf, v))
        _, state = sequential_causal_linear_attention(*head, chunk_size=3, log_keys=log_keys)
    tail = (t[:, :, prefix:] for t in (qf, kf, v))
    return kernel(*tail, state=state, chunk_size=chunk_size, log_keys=log_keys)


def loss(y: torch.Tensor, state: PrefixState) -> torch.Tensor:
    """Depends on every output and on the final sums, with unequal weights."""
    w = torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).view_as(y)
    return (y * w).sum() + state.kv.sin().sum() + state.k.cos().sum()


def assert_same(a, b, leaves, **tol) -> None:
    """Outputs, final state (incl. shift) and gradients into ``leaves`` all agree."""
    (ya, sa), (yb, sb) = a, b
    torch.testing.assert_close(ya, yb, **tol)
    for field in ("kv", "k", "shift"):
        torch.testing.assert_close(getattr(sa, field), getattr(sb, field), **tol)
    ga = torch.autograd.grad(loss(ya, sa), leaves, retain_graph=True)
    gb = torch.autograd.grad(loss(yb, sb), leaves, retain_graph=True)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, **tol)


CASES = [(13, 4, 0), (40, 8, 0), (17, 5, 6), (3, 8, 0), (5, 8, 7), (64, 1, 0)]  # T, C, prefix


@pytest.mark.parametrize(("T", "C", "prefix"), CASES)
@pytest.mark.parametrize("log_keys", [False, True])
def test_parallel_equals_sequential_values_state_and_gradients(T, C, prefix, log_keys) -> None:
    leaves = inputs(prefix + T, log_keys=log_keys, spread=12.0)
    kw = dict(chunk_size=C, log_keys=log_keys, prefix=prefix)
    fast = run(causal_linear_attention, *leaves, **kw)
    slow = run(sequential_causal_linear_attention, *leaves, **kw)
    assert_same(fast, slow, leaves, **TIGHT)


@pytest.mark.parametrize(("T", "C", "prefix"), CASES)
def test_parallel_equals_quadratic_form_values_and_gradients(T, C, prefix) -> None:
    qf, kf, v = leaves = inputs(prefix + T, log_keys=False)
    y, _ = run(causal_linear_attention, qf, kf, v, chunk_size=C, log_keys=False, prefix=prefix)
    ref = quadratic_linear_attention(qf[:, :, prefix:], kf, v, causal=True)  # last T queries
    torch.testing.assert_close(y, ref, **TIGHT)
    w = rand(*y.shape)
    for a, b in zip(
        torch.autograd.grad((y * w).sum(), leaves),
        torch.autograd.grad((ref * w).sum(), leaves),
        strict=True,
    ):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("log_keys", [False, True])
def test_masked_keys_match_quadratic_form_and_sequential_twin(log_keys: bool) -> None:
    qf, kf, v = (t.detach() for t in inputs(21, log_keys=False))
    mask = torch.ones(2, 21, dtype=torch.bool)
    mask[0, :9] = False  # left padding over two whole chunks: queries 0..8 of row 0 see no key
    mask[1, 14:] = False  # right padding, and a partly masked last chunk
    keep = mask[:, None, :, None]
    keys = kf.log().masked_fill(~keep, -math.inf) if log_keys else kf * keep
    leaves = [t.clone().requires_grad_() for t in (qf, keys, v * keep)]
    fast = causal_linear_attention(*leaves, chunk_size=4, log_keys=log_keys)
    slow = sequential_causal_linear_attention(*leaves, chunk_size=4, log_keys=log_keys)
    reference = quadratic_linear_attention(qf, kf, v, causal=True, key_mask=mask)
    torch.testing.assert_close(fast[0], reference, **TIGHT)
    assert (fast[0][0, :, :9] == 0).all()
    grads = torch.autograd.grad(fast[0].sum(), leaves, retain_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    assert_same(fast, slow, leaves, **TIGHT)


class ChunkedShapes(TorchDispatchMode):
    """The largest dim 2 among the 5-d (B, H, N, C, ...) tensors that operators return."""

    def __init__(self) -> None:
        super().__init__()
        self.most_chunks = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() == 5:
                self.most_chunks = max(self.most_chunks, t.size(2))
        return out


@pytest.mark.parametrize("log_keys", [False, True])
def test_segments_continue_each_other_exactly(log_keys: bool, monkeypatch) -> None:
    leaves = inputs(45, log_keys=log_keys, spread=20.0)
    whole = run(causal_linear_attention, *leaves, chunk_size=4, log_keys=log_keys, prefix=3)
    per_chunk = 2 * 2 * 8 * 5 * 5  # B H itemsize max(m (d + 1), C^2) for these shapes
    assert segment_chunks(2, 2, 5, 4, 4, 8) * per_chunk <= la.BLOCK_BYTES
    monkeypatch.setattr(la, "BLOCK_BYTES", 3 * per_chunk)
    assert segment_chunks(2, 2, 5, 4, 4, 8) == 3
    assert segment_chunks(2, 2, 5, 4, 4, 80) == 1  # never fewer than one chunk
    with ChunkedShapes() as seen:
        split = run(causal_linear_attention, *leaves, chunk_size=4, log_keys=log_keys, prefix=3)
    assert seen.most_chunks == 1 + 3  # the incoming state and a segment's 3 chunks, at most
    assert_same(split, whole, leaves, **TIGHT)
    monkeypatch.undo()
    with ChunkedShapes() as control:
        run(causal_linear_attention, *leaves, chunk_size=4, log_keys=log_keys, prefix=3)
    assert control.most_chunks == 1 + 11  # 42 positions: all 11 chunks at once


def decayed_recurrence(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``out_n = exp(ref_{n-1} - ref_n) out_{n-1} + x_n``, one entry at a time."""
    out, acc = [], torch.zeros_like(x[:, :, 0])
    for n in range(x.size(2)):
        if n:
            acc = acc * la._log_ratio(ref[:, :, n - 1], ref[:, :, n]).exp()[..., None]
        acc = acc + x[:, :, n]
        out.append(acc)
    return torch.stack(out, dim=2)


@pytest.mark.parametrize(("N", "block"), [(1, 4), (4, 4), (5, 4), (70, 4), (37, 16)])
def test_decayed_cumsum_equals_its_recurrence(N: int, block: int) -> None:
    ref = torch.sort(rand(2, 3, N, scale=40.0), dim=-1).values
    ref[0, 0, : N // 3] = -math.inf  # nothing summed yet (empty incoming state, masked keys)
    x = rand(2, 3, N, 6).masked_fill(torch.isinf(ref)[..., None], 0.0)
    out = la._decayed_cumsum(x, ref, block=block)
    torch.testing.assert_close(out, decayed_recurrence(x, ref), **TIGHT)
    plain = la._decayed_cumsum(x, torch.zeros_like(ref), block=block)  # all factors 1
    torch.testing.assert_close(plain, x.cumsum(2), **TIGHT)


def test_float32_stays_finite_with_log_features_of_plus_minus_80() -> None:
    qf, kf, v = (t.detach() for t in inputs(300, log_keys=True, m=8, d=8, spread=80.0))
    assert kf.max() > 80 and kf.min() < -80
    ends = kf.amax(-1).cummax(-1).values[..., 15::16].float()  # shifts at chunk ends (C = 16)
    naive = ends.exp()[..., None, :] * (-ends).exp()[..., :, None]  # exp(e_c') exp(-e_c)
    assert not torch.isfinite(naive).all()  # the unstabilised cross-chunk factors overflow
    expected = sequential_causal_linear_attention(qf, kf, v, chunk_size=16, log_keys=True)
    leaves = [t.float().requires_grad_() for t in (qf, kf, v)]
    y, state = causal_linear_attention(*leaves, chunk_size=16, log_keys=True)
    grads = torch.autograd.grad(loss(y, state), leaves)
    for t in (y, state.kv, state.k, state.shift, *grads):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(y.double(), expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state.shift.double(), expected[1].shift)


class OperatorCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("log_keys", [False, True])
def test_work_is_not_a_python_loop_over_chunks(log_keys: bool) -> None:
    def operators(T: int, kernel) -> int:
        leaves = inputs(T, log_keys=log_keys)
        with OperatorCount() as seen:
            y, state = kernel(*leaves, chunk_size=4, log_keys=log_keys)
            torch.autograd.grad(loss(y, state), leaves)
        return seen.count

    # 4 and 12 chunks (one block of the decayed sum), then 16 and 64 chunks (two levels of blocks)
    assert operators(16, causal_linear_attention) == operators(48, causal_linear_attention)
    assert operators(64, causal_linear_attention) == operators(256, causal_linear_attention)
    loop = sequential_causal_linear_attention  # the check can fail: the loop's count grows
    assert operators(48, loop) > operators(16, loop)


@pytest.mark.parametrize("log_keys", [False, True])
def test_final_state_owns_its_memory(log_keys: bool) -> None:
    """A decoding cache keeps the state: it must not be a view pinning the per-chunk sums."""
    with torch.no_grad():
        leaves = inputs(40, log_keys=log_keys)
        _, state = causal_linear_attention(*leaves, chunk_size=4, log_keys=log_keys)
    for t in vars(state).values():
        assert t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
