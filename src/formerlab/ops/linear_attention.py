"""Kernelised ("linear") attention: feature maps, a causal prefix-sum kernel with a recurrent state,
the bidirectional form, and the plain quadratic reference twin they are tested against.

With non-negative features ``phi``, attention becomes ``y_i = phi(q_i)^T S_i / phi(q_i)^T z_i`` where
``S_i = sum_j phi(k_j) v_j^T`` and ``z_i = sum_j phi(k_j)`` run over the keys query ``i`` may see
(Katharopoulos et al., 2020, arXiv:2006.16236). The causal kernel walks the sequence in chunks of
``C`` positions: inside a chunk a masked ``C x C`` product, across chunks the running sums, so no
``T x T`` matrix is ever formed and decoding carries only ``(S, z)`` — constant memory per token.

Keys may come as *log*-features (``log_keys=True``; FAVOR+, Choromanski et al., 2020,
arXiv:2009.14794), whose exponentials can overflow. Each key ``j`` is then exponentiated relative to
``s_j``, the running maximum of the log-features of the keys up to ``j`` (never a later one), and every
product is re-expressed relative to the query's own ``s_i`` by the factor ``exp(s_j - s_i) <= 1``. The
factors cancel between numerator and denominator, so the result equals the unstabilised formula. With
plain features every shift is 0 and every factor exactly 1, so both cases share one code path.

A whole sequence (training, a prompt) runs chunk-parallel, with no Python loop over chunks: every
chunk's key sums ``K_c^T [V_c | 1]`` at once, their prefix sums over chunks as the state each chunk
starts from, and one batched masked ``C x C`` product for the insides of all chunks. With log-keys
the shifts come from one ``cummax`` over the sequence, and chunk ``c'``'s sums reach a later chunk
scaled by ``exp(e_c' - e_c) <= 1`` (``e``: the shift at a chunk's end), summed blockwise
(:func:`_decayed_cumsum`) so nothing overflows. Decoding and inputs of at most one chunk take the
sequential loop (:func:`sequential_causal_linear_attention`), the parallel form's reference twin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .heads import BLOCK_BYTES


@dataclass
class PrefixState:
    """Running sums of one attention layer: what a decoder keeps instead of keys and values.

    ``kv`` (B, H, m, d) is ``sum_j phi(k_j) v_j^T`` and ``k`` (B, H, m) is ``sum_j phi(k_j)``, both
    scaled by ``exp(-shift)``; ``shift`` (B, H) is the running max of the key log-features (``-inf``
    before any key), or 0 for plain features.
    """

    kv: torch.Tensor
    k: torch.Tensor
    shift: torch.Tensor


def elu_features(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: the positive feature map of Katharopoulos et al. (2020)."""
    return F.elu(x) + 1.0


def draw_random_features(
    num_features: int,
    dim: int,
    *,
    orthogonal: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(m, d) float64 Gaussian projections ``omega_i ~ N(0, I_d)``.

    ``orthogonal``: rows drawn in blocks of ``d`` mutually orthogonal directions (QR of a Gaussian
    matrix, signs fixed so each block is Haar-distributed), each row rescaled to the norm of an
    independent N(0, I_d) vector, so every row keeps the N(0, I_d) marginal (FAVOR+'s ORFs).
    """
    gauss = torch.randn(num_features, dim, generator=generator, dtype=torch.float64)
    if not orthogonal:
        return gauss
    blocks = math.ceil(num_features / dim)
    q, r = torch.linalg.qr(torch.randn(blocks, dim, dim, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # (blocks, d, d) Haar
    directions = q.transpose(-1, -2).reshape(blocks * dim, dim)[:num_features]  # orthonormal rows
    return directions * gauss.norm(dim=1, keepdim=True)


def favor_log_features(x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """Logs of the positive random features: ``omega_i^T x - |x|^2 / 2 - log(m) / 2``.

    ``x`` (..., d), ``omega`` (m, d) -> (..., m). ``exp`` of these for ``q`` and ``k`` gives features
    with ``E[phi(q)^T phi(k)] = exp(q^T k)`` (Choromanski et al., 2020, Lemma 1).
    """
    sq = x.square().sum(-1, keepdim=True) / 2
    return x @ omega.to(x).T - sq - math.log(omega.size(0)) / 2


def stable_query_features(log_q: torch.Tensor) -> torch.Tensor:
    """``exp`` of query log-features less their row maximum: a per-query factor that cancels."""
    return torch.exp(log_q - log_q.detach().amax(-1, keepdim=True))


def empty_state(
    batch: int, heads: int, features: int, dim: int, *, log_keys: bool, like: torch.Tensor
) -> PrefixState:
    """The state before any key: zero sums; shift ``-inf`` (log keys) or 0 (plain features)."""
    kv = like.new_zeros(batch, heads, features, dim)
    shift = like.new_full((batch, heads), -math.inf if log_keys else 0.0)
    return PrefixState(kv, like.new_zeros(batch, heads, features), shift)


def causal_linear_attention(
    qf: torch.Tensor,
    kf: torch.Tensor,
    v: torch.Tensor,
    *,
    state: PrefixState | None = None,
    chunk_size: int = 64,
    log_keys: bool = False,
) -> tuple[torch.Tensor, PrefixState]:
    """Causal linear attention by chunked prefix sums, continuing from ``state``.

    ``qf`` (B, H, T, m) query features, ``kf`` (B, H, T, m) key features (log-features when
    ``log_keys``; a masked key is 0, or ``-inf`` as a log), ``v`` (B, H, T, d). The queries and keys
    of this call share positions and follow the ones summarised in ``state``.
    Returns ``(B, H, T, d)`` outputs and the state after the last key.

    Up to one chunk (decoding, short prompts) runs :func:`sequential_causal_linear_attention`; longer
    inputs the chunk-parallel form, on segments of at most :func:`segment_chunks` chunks.
    """
    B, H, length, m = kf.shape
    if state is None:
        state = empty_state(B, H, m, v.size(-1), log_keys=log_keys, like=v)
    if length <= chunk_size:
        return _causal_chunk(qf, kf, v, state, log_keys)
    span = chunk_size * segment_chunks(B, H, m, v.size(-1), chunk_size, v.element_size())
    outs = []
    for q_s, k_s, v_s in zip(*(t.split(span, dim=2) for t in (qf, kf, v)), strict=True):
        out, state = _parallel_chunks(q_s, k_s, v_s, state, chunk_size, log_keys)
        outs.append(out)
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), state


def sequential_causal_linear_attention(
    qf: torch.Tensor,
    kf: torch.Tensor,
    v: torch.Tensor,
    *,
    state: PrefixState | None = None,
    chunk_size: int = 64,
    log_keys: bool = False,
) -> tuple[torch.Tensor, PrefixState]:
    """The same as :func:`causal_linear_attention`, one chunk after another in a Python loop.

    The chunk-parallel form's reference twin (and its path for a single chunk)."""
    B, H, _, m = kf.shape
    if state is None:
        state = empty_state(B, H, m, v.size(-1), log_keys=log_keys, like=v)
    outs = []
    chunks = (t.split(chunk_size, dim=2) for t in (qf, kf, v))  # split: one backward for all
    for q_c, k_c, v_c in zip(*chunks, strict=True):
        out, state = _causal_chunk(q_c, k_c, v_c, state, log_keys)
        outs.append(out)
    return torch.cat(outs, dim=2), state


def segment_chunks(
    batch: int, heads: int, features: int, dim: int, chunk_size: int, itemsize: int
) -> int:
    """Chunks per segment of the parallel form, so that its largest temporaries, the per-chunk
    sums ``(B, H, N, m, d + 1)`` and the ``C x C`` scores, stay within
    :data:`~formerlab.ops.heads.BLOCK_BYTES` each (at least one chunk)."""
    per_chunk = batch * heads * itemsize * max(features * (dim + 1), chunk_size * chunk_size)
    return max(1, BLOCK_BYTES // per_chunk)


def _parallel_chunks(qf, kf, v, state: PrefixState, C: int, log_keys: bool):
    """All chunks at once: per-chunk key sums, their (decayed) prefix sums over chunks as each
    chunk's carried state, and one batched masked ``C x C`` product for the chunks' insides.

    Values get a column of ones, so one product gives numerator and denominator together (sums
    ``[S | z]`` of width ``d + 1``); it also spares matrix-vector products, slow on CPU."""
    B, H, T, m = kf.shape
    d = v.size(-1)
    N = -(-T // C)
    pad = N * C - T
    keys, shift = _shifted_keys(kf, state.shift, log_keys)  # (B, H, T, m), (B, H, T)
    q_c, k_c = (  # padded queries are dropped at the end; padded keys are 0: they add nothing
        (F.pad(t, (0, 0, 0, pad)) if pad else t).reshape(B, H, N, C, m) for t in (qf, keys)
    )
    v_c = F.pad(v, (0, 1, 0, pad), value=1.0).view(B, H, N, C, d + 1)  # [v | 1]
    lower = torch.ones(C, C, dtype=torch.bool, device=kf.device).tril()
    scores = q_c @ k_c.transpose(-1, -2)  # (B, H, N, C, C): query i, key j of the same chunk
    incoming = torch.cat([state.kv, state.k[..., None]], dim=-1)[:, :, None]  # (B, H, 1, m, d + 1)
    if log_keys:
        s_c = torch.cat([shift, shift[..., -1:].expand(B, H, pad)], dim=-1).view(B, H, N, C)
        ends = torch.cat([state.shift[..., None], s_c[..., -1]], dim=-1)  # (B, H, N + 1)
        gap = _log_ratio(s_c[..., None, :], s_c[..., :, None]).masked_fill(~lower, -math.inf)
        scores = scores * gap.exp()
        to_end = _log_ratio(s_c, ends[..., 1:, None]).exp()[..., None]  # (B, H, N, C, 1)
        sums = (k_c * to_end).transpose(-1, -2) @ v_c  # (B, H, N, m, d + 1), at each chunk's end
        stacked = torch.cat([incoming, sums], dim=2)  # (B, H, N + 1, m, d + 1)
        prefix = _decayed_cumsum(stacked.flatten(3), ends).view(stacked.shape)
    else:
        scores = scores.masked_fill(~lower, 0.0)
        sums = k_c.transpose(-1, -2) @ v_c  # (B, H, N, m, d + 1)
        prefix = torch.cat([incoming, sums], dim=2).cumsum(dim=2)  # state after each chunk
    carried, final = prefix.split([N, 1], dim=2)  # split, not slices: one cheap backward
    inter = q_c @ carried  # (B, H, N, C, d + 1)
    if log_keys:  # the carried sums are relative to the previous chunk's end shift
        inter = inter * _log_ratio(ends[..., :-1, None], s_c).exp()[..., None]
    num, den = (scores @ v_c + inter).view(B, H, N * C, d + 1).split([d, 1], dim=-1)
    y = _divide(num, den)
    if pad:
        y = y.split([T, pad], dim=2)[0]
    kv, k = final.squeeze(2).split([d, 1], dim=-1)
    last = ends[..., -1] if log_keys else state.shift
    own = dict(memory_format=torch.contiguous_format)  # copies: a cache must not pin ``prefix``
    return y, PrefixState(kv.clone(**own), k.squeeze(-1).clone(**own), last.clone(**own))


def _decayed_cumsum(x: torch.Tensor, ref: torch.Tensor, block: int = 16) -> torch.Tensor:
    """``out_n = sum_{n' <= n} exp(ref_n' - ref_n) x_n'`` along dim 2 of ``x`` (B, H, N, F), for a
    non-decreasing ``ref`` (B, H, N): every factor <= 1, so nothing overflows.

    Up to ``block`` entries this is one lower-triangular ``N x N`` factor matrix times ``x``; longer
    runs go by blocks: that product inside each block, then the same sum (recursively) over the
    blocks' totals, carried into each block scaled by one more factor <= 1 (``O(N * block)``
    work instead of ``O(N^2)``, and no strided scan along dim 2, which is slow on CPU)."""
    B, H, N, width = x.shape
    if x.size(2) <= block:
        tri = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
        factors = _log_ratio(ref[..., None, :], ref[..., :, None]).masked_fill(~tri, -math.inf)
        return factors.exp() @ x
    M = -(-N // block)
    pad = M * block - N
    x_b = F.pad(x, (0, 0, 0, pad)).view(B, H, M, block, width)  # zero entries add nothing
    ref_b = torch.cat([ref, ref[..., -1:].expand(B, H, pad)], dim=-1).view(B, H, M, block)
    tri = torch.ones(block, block, dtype=torch.bool, device=x.device).tril()
    factors = _log_ratio(ref_b[..., None, :], ref_b[..., :, None]).masked_fill(~tri, -math.inf)
    factors = factors.exp()  # (B, H, M, block, block)
    inside = factors @ x_b  # (B, H, M, block, F): sums within each block
    ends = ref_b[..., -1]  # (B, H, M)
    block_sums = (factors[..., -1:, :] @ x_b).squeeze(3)  # inside's last rows, (B, H, M, F)
    totals = _decayed_cumsum(block_sums, ends, block)  # through each block's end
    carry = F.pad(totals, (0, 0, 1, -1))  # into block b: the total through block b - 1
    before = _log_ratio(F.pad(ends, (1, -1), value=-math.inf)[..., None], ref_b).exp()
    flat = (-1, block, width)  # out = inside + before (x) carry, one fused product per block
    out = torch.baddbmm(inside.view(flat), before.view(-1, block, 1), carry.view(-1, 1, width))
    out = out.view(B, H, M * block, width)
    return out.split([N, pad], dim=2)[0] if pad else out


def _causal_chunk(qf, kf, v, state: PrefixState, log_keys: bool):
    keys, shift = _shifted_keys(kf, state.shift, log_keys)  # (B, H, C, m), (B, H, C)
    C = kf.size(2)
    lower = torch.ones(C, C, dtype=torch.bool, device=kf.device).tril()
    gap = _log_ratio(shift[..., None, :], shift[..., :, None]).masked_fill(~lower, -math.inf)
    scores = (qf @ keys.transpose(-1, -2)) * gap.exp()  # (B, H, C, C): query i, key j <= i
    carried = _log_ratio(state.shift[..., None], shift).exp()[..., None]  # (B, H, C, 1)
    num = scores @ v + carried * (qf @ state.kv)
    den = scores.sum(-1, keepdim=True) + carried * (qf @ state.k[..., None])
    return _divide(num, den), _advance(state, keys, shift, v)


def _shifted_keys(kf, prior, log_keys: bool):
    """Keys as features, each relative to its running-max shift (plain features: shift 0)."""
    if not log_keys:
        return kf, kf.new_zeros(kf.shape[:3])
    with torch.no_grad():
        steps = torch.cat([prior[..., None], kf.amax(-1)], dim=-1)  # (B, H, 1 + C)
        shift = torch.cummax(steps, dim=-1).values[..., 1:]  # (B, H, C)
    finite = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return torch.exp(kf - finite[..., None]), shift


def _log_ratio(earlier: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
    """``earlier - later`` for two running-max shifts; 0 where both are ``-inf`` (nothing yet)."""
    return torch.nan_to_num(earlier - later, nan=0.0, posinf=math.inf, neginf=-math.inf)


def _advance(state: PrefixState, keys, shift, v) -> PrefixState:
    """Fold this chunk's keys into the running sums, re-expressed at the chunk's last shift."""
    last = shift[..., -1]  # (B, H)
    decay = _log_ratio(state.shift, last).exp()  # (B, H)
    weighted = keys * _log_ratio(shift, last[..., None]).exp()[..., None]  # (B, H, C, m)
    kv = state.kv * decay[..., None, None] + weighted.transpose(-1, -2) @ v
    return PrefixState(kv, state.k * decay[..., None] + weighted.sum(2), last)


def bidirectional_linear_attention(
    qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, *, log_keys: bool = False
) -> torch.Tensor:
    """Every query sees every (unmasked) key: ``phi(Q) (phi(K)^T V)`` normalised, in O(T).

    Shapes as :func:`causal_linear_attention`, except that keys/values may be ``S != T`` long; with
    ``log_keys`` the shift is the maximum over all keys.
    """
    if log_keys:
        top = kf.detach().amax(dim=(-2, -1), keepdim=True)  # (B, H, 1, 1)
        kf = torch.exp(kf - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
    kv = kf.transpose(-1, -2) @ v  # (B, H, m, d)
    return _divide(qf @ kv, qf @ kf.sum(2)[..., None])


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``; a query that sees no key (den 0, so num 0) gets a zero output."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def quadratic_linear_attention(
    qf: torch.Tensor,
    kf: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference twin, the naive O(T^2) way: ``(phi(Q) phi(K)^T * mask) V`` row-normalised.

    Plain features only. Queries are the last ``T`` of the ``S`` key positions; ``key_mask`` (B, S)
    bool, True = real token.
    """
    scores = qf @ kf.transpose(-1, -2)  # (B, H, T, S)
    T, S = scores.shape[-2:]
    if causal:
        scores = scores.tril(S - T)
    if key_mask is not None:
        scores = scores * key_mask[:, None, None, :].to(scores)
    return _divide(scores @ v, scores.sum(-1, keepdim=True))
