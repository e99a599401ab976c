"""Locality-sensitive-hashing attention (Kitaev, Kaiser, Levskaya, 2020, Reformer,
arXiv:2001.04451).

``lsh_buckets`` hashes vectors by random rotations, ``h(x) = argmax([xR; -xR])``.
``lsh_attention`` is the chunked kernel: per hash round, tokens are sorted by (bucket, position),
the sorted sequence is cut into chunks of ``window`` tokens, and each chunk attends to itself and
its neighbour chunk(s), so memory is O(rounds * T * window), never T x T.
``lsh_attention_reference`` is its plain O(T^2) twin.

The attended set of query i in round r is P_i^r = {j : same bucket as i, at most ``window`` places
from i among the bucket's real tokens ordered by position, j != i, key j real, j < i if causal}.
Rounds are combined as softmax attention over the union of the P_i^r: each round's scores of key j
are lowered by log(number of rounds whose set holds j), then the rounds' outputs are weighted by
their normalisers (logsumexp). A query whose union is empty attends to itself alone.

Because the window is counted inside the query's bucket, the set depends only on tokens at or
before i when causal (sorting by bucket never lets later tokens shift it), and padded tokens, which
sort into a group of their own, never change the sets of real ones.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def lsh_buckets(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) vectors, (R, d, n_buckets // 2) rotations -> (B, H, R, T) bucket ids.

    An empty last dimension (one bucket) puts every vector in bucket 0.
    """
    B, H, T, _ = x.shape
    if rotations.size(-1) == 0:
        return torch.zeros(B, H, rotations.size(0), T, dtype=torch.long, device=x.device)
    rotated = torch.einsum("bhtd,rdk->bhrtk", x, rotations.to(x.dtype))
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)


def _chunks(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, R, Tp, ...) -> (B, H, R, Tp // window, window, ...)."""
    return x.unflatten(3, (x.size(3) // window, window))


def _look_around(x: torch.Tensor, after: bool, fill: float = 0) -> torch.Tensor:
    """Chunked (B, H, R, nc, m, ...) -> the previous, own (and next) chunk: (B, H, R, nc, w*m, ...).

    Missing neighbours at the ends are ``fill`` (codes far from every real one; zeros for vectors).
    """
    edge = torch.full_like(x[:, :, :, :1], fill)
    parts = [torch.cat([edge, x[:, :, :, :-1]], dim=3), x]
    if after:
        parts.append(torch.cat([x[:, :, :, 1:], edge], dim=3))
    return torch.cat(parts, dim=4)


def _sort_rounds(buckets: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per round, order tokens by (bucket, position), padding first in a group (-1) of its own.

    (B, H, R, Tp) buckets, (B, Tp) validity -> ``perm``: the token at each sorted place, and
    ``code``: ``group * 2Tp + place`` of each token (group: its bucket, -1 for padding; place: its
    sorted place), both (B, H, R, Tp). Two tokens share a bucket and lie within ``window <= Tp``
    places of each other exactly when their codes do.
    """
    Tp = buckets.size(-1)
    t = torch.arange(Tp, device=buckets.device)
    group = torch.where(valid[:, None, None, :], buckets, -1)
    perm = (group * Tp + t).argsort(dim=-1)
    place = torch.empty_like(perm).scatter_(-1, perm, t.expand_as(perm))
    return perm, group * 2 * Tp + place


def _gather_rounds(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Token-ordered (B, H, Tp, ...) -> sorted per round (B, H, R, Tp, ...)."""
    R = perm.size(2)
    expanded = x[:, :, None].expand(-1, -1, R, *x.shape[2:])
    index = perm.view(*perm.shape, *([1] * (x.dim() - 3))).expand_as(expanded)
    return expanded.gather(3, index)


def _code_gaps(sorted_code: torch.Tensor, window: int, after: bool) -> torch.Tensor:
    """(B, H, R, Tp) codes in each round's sorted order -> query code minus key code for every
    chunked (query, key) pair: (B, H, R, nc, m, w*m)."""
    chunked = _chunks(sorted_code, window)
    keys = _look_around(chunked, after, fill=-8 * sorted_code.size(-1))  # far from every code
    return chunked[..., None] - keys[..., None, :]


def _allowed(code: torch.Tensor, perm: torch.Tensor, window: int, causal: bool) -> torch.Tensor:
    """(B, H, R, nc, m, w*m) bool: key in the query's own round set.

    Same bucket and within ``window`` places (close codes), not itself (gap 0), earlier if causal;
    padding keys sit in their own group, so real queries never see them.
    """
    gap = _code_gaps(code.gather(-1, perm), window, not causal)
    if causal:
        return (gap > 0) & (gap <= window)
    return (gap != 0) & (gap.abs() <= window)


def _round_counts(code: torch.Tensor, perm: torch.Tensor, window: int, after: bool) -> torch.Tensor:
    """For each chunked (query, key) pair, in how many rounds the key is in the query's set."""
    counts = 0
    for other in code.unbind(2):  # one round at a time keeps memory at O(R * T * window)
        sorted_other = other[:, :, None].expand_as(perm).gather(-1, perm)
        counts = counts + (_code_gaps(sorted_other, window, after).abs() <= window)
    return counts.clamp(min=1)  # (B, H, R, nc, m, w*m)


def _chunk_softmax(
    scores: torch.Tensor, allowed: torch.Tensor, vk: torch.Tensor, dropout_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax per chunk -> (output (…, m, d), log-normaliser (…, m); -inf where no key)."""
    scores = scores.masked_fill(~allowed, -math.inf)
    top = scores.amax(dim=-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(scores - top)
    total = e.sum(dim=-1, keepdim=True)
    empty = total == 0
    total = torch.where(empty, torch.ones_like(total), total)
    p = e / total
    if dropout_p > 0:
        p = F.dropout(p, dropout_p, training=True)
    lse = (total.log() + top).masked_fill(empty, -math.inf)
    return p @ vk, lse.squeeze(-1)


def _combine_rounds(out: torch.Tensor, lse: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, R, T, d) round outputs, (B, H, R, T) normalisers -> (B, H, T, d).

    A query with no key in any round gets its own value."""
    top = lse.amax(dim=2, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(lse - top)  # (B, H, R, T)
    total = w.sum(dim=2)
    alone = total == 0
    y = (w[..., None] * out).sum(dim=2) / torch.where(alone, torch.ones_like(total), total)[
        ..., None
    ]
    return torch.where(alone[..., None], v, y)


def lsh_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    buckets: torch.Tensor,
    *,
    window: int,
    causal: bool,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Chunked LSH attention: (B, H, T, d) q, k, v and (B, H, R, T) buckets -> (B, H, T, d).

    ``key_mask`` (B, T) bool, True = real token. Memory O(R * T * window); never T x T.
    """
    B, _, T, d = q.shape
    m, scale = window, scale if scale is not None else 1 / math.sqrt(d)
    Tp = -(-T // m) * m  # padded to whole chunks
    valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
    valid = F.pad(valid.to(torch.bool), (0, Tp - T))
    perm, code = _sort_rounds(F.pad(buckets, (0, Tp - T)), valid)
    place = code % (2 * Tp)  # sorted place of each token (B, H, R, Tp)
    qc, kc, vc = (_chunks(_gather_rounds(F.pad(x, (0, 0, 0, Tp - T)), perm), m) for x in (q, k, v))
    kc, vc = _look_around(kc, not causal), _look_around(vc, not causal)  # (B, H, R, nc, w*m, d)
    scores = (qc @ kc.transpose(-1, -2)) * scale  # (B, H, R, nc, m, w*m)
    if buckets.size(2) > 1:  # a key held by several rounds counts once in the union
        scores = scores - _round_counts(code, perm, m, not causal).to(scores.dtype).log()
    out, lse = _chunk_softmax(scores, _allowed(code, perm, m, causal), vc, dropout_p)
    out, lse = out.flatten(3, 4), lse.flatten(3, 4)  # sorted (B, H, R, Tp, d), (B, H, R, Tp)
    out = out.gather(3, place[..., None].expand_as(out))[:, :, :, :T]  # back to token order
    return _combine_rounds(out, lse.gather(3, place)[:, :, :, :T], v)


def lsh_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    buckets: torch.Tensor,
    *,
    window: int,
    causal: bool,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The same attention written the plain O(T^2) way: explicit union of per-round key sets."""
    B, H, T, d = q.shape
    scale = scale if scale is not None else 1 / math.sqrt(d)
    valid = torch.ones(B, T, dtype=torch.bool) if key_mask is None else key_mask.to(torch.bool)
    t = torch.arange(T)
    earlier = t[None, :] < t[:, None]  # (T_q, T_k): key before query
    allowed = valid[:, None, None, :] & (t[:, None] != t[None, :])
    if causal:
        allowed = allowed & earlier
    member = torch.zeros(B, H, T, T, dtype=torch.bool)
    for r in range(buckets.size(2)):
        b = buckets[:, :, r]  # (B, H, T)
        same = b[..., :, None] == b[..., None, :]
        rank = (same & earlier & valid[:, None, None, :]).sum(-1)  # real same-bucket keys before
        member |= same & ((rank[..., :, None] - rank[..., None, :]).abs() <= window)
    member &= allowed
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~member, -math.inf)
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    alone = ~member.any(-1, keepdim=True)
    return torch.where(alone, v, p @ v)
