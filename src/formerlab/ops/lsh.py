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

Cost: the mask and the duplicate correction enter as one additive bias built without gradients
(int32 codes, one pass per other round); each chunk's scores against its neighbour chunks are
products with views of one flat array of sorted chunks (no copies of the keys); every round keeps
unnormalised sums ``sum e_j v_j`` and ``sum e_j`` with ``e_j = exp(s_j - row max)`` (max detached),
and rounds are rescaled to a common max before one division, which is exactly the softmax over the
union, gradients included.

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

    An empty last dimension (one bucket) puts every vector in bucket 0. ``argmax([xR; -xR])`` is
    read off the max and min of ``xR`` (first index on ties, as the argmax of the concatenation),
    so only ``xR`` itself is ever built, with one matrix product for every round.
    """
    B, H, T, d = x.shape
    R, _, half = rotations.shape
    if half == 0:
        return torch.zeros(B, H, R, T, dtype=torch.long, device=x.device)
    with torch.no_grad():
        rotated = (x.reshape(-1, d) @ rotations.to(x.dtype).transpose(0, 1).reshape(d, -1)).view(
            B, H, T, R, half
        )
        top, at_top = rotated.max(dim=-1)
        low, at_low = rotated.min(dim=-1)
        buckets = torch.where(top >= -low, at_top, at_low + half)  # (B, H, T, R)
    return buckets.transpose(2, 3)


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


def _row_index(index: torch.Tensor, lead: int, rows: int) -> torch.Tensor:
    """Places ``index`` within each group of its first ``lead`` dims -> flat row numbers of a
    (groups * rows, ...) tensor."""
    groups = index.shape[:lead]
    base = torch.arange(math.prod(groups), device=index.device) * rows
    return (index + base.view(*groups, *([1] * (index.dim() - lead)))).flatten()


def _sorted_chunks(x: torch.Tensor, perm: torch.Tensor, window: int) -> torch.Tensor:
    """Token-ordered (B, H, Tp, d) -> every round's sorted chunks, flat: (B * H * R * nc, m, d)."""
    B, H, Tp, d = x.shape
    rows = x.reshape(B * H * Tp, d).index_select(0, _row_index(perm, 2, Tp))
    return rows.view(-1, window, d)


def _neighbours(chunks: torch.Tensor, after: bool) -> list[torch.Tensor]:
    """Views of the previous, own (and next) chunk of each flat chunk: no copies of the keys.

    Across the ends of a (b, h, round) run they show the next run's chunks or zeros; the score
    bias masks those pairs out."""
    padded = F.pad(chunks, (0, 0, 0, 0, 1, 1))
    n = chunks.size(0)
    return [padded[j : j + n] for j in range(3 if after else 2)]


def _narrow_codes(code: torch.Tensor) -> torch.Tensor:
    """The codes as int32 when they fit (halves the traffic of the mask arithmetic)."""
    limit = 2**30
    if code.numel() and int(code.abs().max()) < limit:
        return code.to(torch.int32)
    return code


def _own_round(code: torch.Tensor, perm: torch.Tensor, window: int, causal: bool) -> torch.Tensor:
    """(B, H, R, nc, m, w*m) bool: key in the query's own round set.

    In a round's sorted order the place gap of a chunked (query, key) pair is fixed by where they
    sit in the chunk window; the pair is in the set when it shares the group (bucket; -1 for
    padding, -2 for the missing chunks at the ends) and that gap is 1..window (either sign unless
    causal)."""
    Tp = code.size(-1)
    group = _chunks(torch.div(code.gather(-1, perm), 2 * Tp, rounding_mode="floor"), window)
    keys = _look_around(group, not causal, fill=-2)  # (B, H, R, nc, w*m)
    gap = window + torch.arange(window, device=code.device)[:, None]
    gap = gap - torch.arange(keys.size(-1), device=code.device)  # (m, w*m): query minus key place
    near = (gap > 0) & (gap <= window) if causal else (gap != 0) & (gap.abs() <= window)
    return (group[..., None] == keys[..., None, :]) & near


def _other_rounds(code: torch.Tensor, perm: torch.Tensor, window: int, after: bool):
    """For each chunked (query, key) pair, in how many other rounds the key is in the query's set
    (same bucket, within ``window`` places): (B, H, R, nc, m, w*m) (bool for two rounds, else
    uint8), or None for one round."""
    R = code.size(2)
    if R == 1:
        return None
    counts = []
    for r in range(R):  # the pairs of round r's chunks, looked up in every other round
        count = None
        for other in (o for o in range(R) if o != r):
            chunked = _chunks(code[:, :, other].gather(-1, perm[:, :, r])[:, :, None], window)
            keys = _look_around(chunked, after, fill=-8 * code.size(-1))  # far from every code
            member = (chunked[..., None] - keys[..., None, :]).abs_() <= window
            count = member if count is None else count.to(torch.uint8).add_(member)
        counts.append(count)
    return torch.cat(counts, dim=2)


def _round_bias(code, perm, window: int, causal: bool, dtype) -> torch.Tensor:
    """Additive score bias: -inf outside the own round set, else -log(rounds holding the key)."""
    with torch.no_grad():
        code = _narrow_codes(code)
        allowed = _own_round(code, perm, window, causal)
        others = _other_rounds(code, perm, window, not causal)
        blocked = torch.full((), float("-inf"), dtype=dtype, device=code.device)
        logs = -torch.arange(1, code.size(2) + 1, dtype=dtype, device=code.device).log()
        if others is None:
            return torch.where(allowed, logs[0], blocked)
        if others.dtype == torch.bool:  # two rounds: held by the other one too, or not
            return torch.where(allowed, torch.where(others, logs[1], logs[0]), blocked)
        return torch.where(allowed, logs[others.long()], blocked)


def _chunk_exp(q, keys, values, bias, dropout_p: float):
    """Unnormalised softmax of each chunk over its neighbour chunks (``bias`` (N, m, w*m) added).

    Returns (sum_j e_j v_j (N, m, d), sum_j e_j (N, m), row max (N, m); -inf where no key), with
    ``e = exp(score - row max)`` and the max held constant (detached), so every round's sums
    share one exact gradient however they are rescaled later."""
    m = q.size(1)
    scores = [
        torch.baddbmm(bias[..., j * m : (j + 1) * m], q, k.transpose(1, 2))
        for j, k in enumerate(keys)
    ]  # (N, m, m) per neighbour
    top = torch.stack([s.detach().amax(dim=-1) for s in scores]).amax(dim=0)  # (N, m)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))[..., None]
    out, total = None, None
    for s, v in zip(scores, values, strict=True):
        e = s.sub_(shift).exp_()
        total = e.sum(dim=-1) if total is None else total + e.sum(dim=-1)
        if dropout_p > 0:
            e = F.dropout(e, dropout_p, training=True)
        out = e @ v if out is None else torch.baddbmm(out, e, v)
    return out, total, top


def _combine_rounds(out, total, top, v: torch.Tensor) -> torch.Tensor:
    """(B, H, R, T, d) round sums, (B, H, R, T) normalisers and row maxima -> (B, H, T, d).

    Rounds are rescaled to a common maximum and normalised together (softmax over the union).
    A query with no key in any round gets its own value."""
    best = top.amax(dim=2, keepdim=True)
    scale = torch.exp(top - torch.where(torch.isfinite(best), best, torch.zeros_like(best)))
    norm = (scale * total).sum(dim=2)  # (B, H, T)
    alone = norm == 0
    y = (scale[..., None] * out).sum(dim=2) / torch.where(alone, 1.0, norm)[..., None]
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
    qc, kc, vc = (_sorted_chunks(F.pad(x, (0, 0, 0, Tp - T)), perm, m) for x in (q * scale, k, v))
    bias = _round_bias(code, perm, m, causal, q.dtype).flatten(0, 3)  # (N, m, w*m)
    out, total, top = _chunk_exp(
        qc, _neighbours(kc, not causal), _neighbours(vc, not causal), bias, dropout_p
    )
    shape = place.shape  # (B, H, R, Tp): back to token order
    out = out.view(-1, q.size(-1)).index_select(0, _row_index(place, 3, Tp))
    out = out.view(*shape, -1)[:, :, :, :T]
    total, top = (x.view(shape).gather(3, place)[:, :, :, :T] for x in (total, top))
    return _combine_rounds(out, total, top, v)


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
