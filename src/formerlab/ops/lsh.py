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

from .heads import over_head_blocks


def lsh_buckets(
    x: torch.Tensor, rotations: torch.Tensor, factors: tuple[int, ...] | None = None
) -> torch.Tensor:
    """(B, H, T, d) vectors, (R, d, n_buckets // 2) rotations -> (B, H, R, T) bucket ids.

    An empty last dimension (one bucket) puts every vector in bucket 0. ``argmax([xR; -xR])`` is
    read off the max and min of ``xR`` (first index on ties, as the argmax of the concatenation),
    so only ``xR`` itself is ever built, with one matrix product for every round.

    ``factors`` (even bucket counts ``b_1, b_2, ...``) makes the hash factorized: the rotations'
    last dimension holds ``b_1 / 2 + b_2 / 2 + ...`` columns, each group hashes on its own, and
    the bucket is the mixed-radix number of the groups' buckets (``b_1 * b_2 * ...`` buckets for
    ``(b_1 + b_2 + ...) / 2`` columns). Null: one hash over all the columns.
    """
    B, H, T, d = x.shape
    R, _, columns = rotations.shape
    if columns == 0:
        return torch.zeros(B, H, R, T, dtype=torch.long, device=x.device)
    halves = [columns] if factors is None else [f // 2 for f in factors]
    if sum(halves) != columns:
        raise ValueError(f"factors {factors} need {sum(halves)} rotation columns, got {columns}")
    with torch.no_grad():
        rotated = (x.reshape(-1, d) @ rotations.to(x.dtype).transpose(0, 1).reshape(d, -1)).view(
            B, H, T, R, columns
        )
        buckets = None
        for part, half in zip(rotated.split(halves, dim=-1), halves, strict=True):
            top, at_top = part.max(dim=-1)
            low, at_low = part.min(dim=-1)
            one = torch.where(top >= -low, at_top, at_low + half)  # (B, H, T, R)
            buckets = one if buckets is None else buckets * (2 * half) + one
    return buckets.transpose(2, 3)


class _PermutedRows(torch.autograd.Function):
    """``x[index]`` where ``index`` lists each row of every group of ``x`` once per copy.

    ``x`` is ``(groups * n, d)``; the output is ``(groups * copies * n, d)``, and ``inverse`` holds,
    in the layout ``(groups, copies, n)``, the output row of each input row. The gradient is then
    read back by one ``index_select`` (and a sum over the copies) instead of accumulated by a
    scatter-add over all rows, which is what makes the backward of the sort cheap.
    """

    @staticmethod
    def forward(ctx, x, index, inverse, groups: int, copies: int):  # type: ignore[override]
        ctx.save_for_backward(inverse)
        ctx.groups, ctx.copies = groups, copies
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        rows = grad.index_select(0, inverse)
        if ctx.copies > 1:
            rows = rows.view(ctx.groups, ctx.copies, -1, rows.size(-1)).sum(dim=1).flatten(0, 1)
        return rows, None, None, None, None


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


def _sorted_chunks(x, perm, place, window: int) -> torch.Tensor:
    """Token-ordered (B, H, Tp, d) -> every round's sorted chunks, flat: (B * H * R * nc, m, d)."""
    B, H, Tp, d = x.shape
    index, inverse = _row_index(perm, 2, Tp), _row_index(place, 3, Tp)
    rows = _PermutedRows.apply(x.reshape(B * H * Tp, d), index, inverse, B * H, perm.size(2))
    return rows.view(-1, window, d)


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


def _held_elsewhere(code: torch.Tensor, perm: torch.Tensor, r: int, window: int, after: bool):
    """For each chunked (query, key) pair of round ``r``, in how many other rounds the key is in
    the query's set (same bucket, within ``window`` places): (B, H, nc, m, w*m), bool for two
    rounds, uint8 for more, None for one round.

    Built from broadcast comparisons of the small per-token codes, so no (pairs)-sized integer
    array is ever formed."""
    count = None
    for other in (o for o in range(code.size(2)) if o != r):
        chunked = _chunks(code[:, :, other].gather(-1, perm[:, :, r])[:, :, None], window)
        keys = _look_around(chunked, after, fill=-8 * code.size(-1))[:, :, 0, :, None, :]
        query = chunked[:, :, 0, :, :, None]  # (B, H, nc, m, 1) against keys (B, H, nc, 1, w*m)
        member = (keys >= query - window) & (keys <= query + window)
        count = member if count is None else count.to(torch.uint8).add_(member)
    return count


def _round_bias(code, perm, window: int, causal: bool, dtype) -> torch.Tensor:
    """Additive score bias: -inf outside the own round set, else -log(rounds holding the key);
    (B, H, R, nc, m, w*m), built one round at a time into one array."""
    with torch.no_grad():
        code = _narrow_codes(code)
        allowed = _own_round(code, perm, window, causal)
        bias = torch.empty(allowed.shape, dtype=dtype, device=code.device)
        blocked = torch.full((), float("-inf"), dtype=dtype, device=code.device)
        logs = -torch.arange(1, code.size(2) + 1, dtype=dtype, device=code.device).log()
        for r in range(code.size(2)):
            held = _held_elsewhere(code, perm, r, window, not causal)
            if held is None:
                value = logs[0]
            elif held.dtype == torch.bool:  # two rounds: held by the other one too, or not
                value = torch.where(held, logs[1], logs[0])
            else:
                value = logs[held.long()]
            torch.where(allowed[:, :, r], value, blocked, out=bias[:, :, r])
        return bias


def _pairs(j: int, n: int) -> tuple[slice, slice]:
    """Neighbour ``j`` (0: previous chunk, 1: own, 2: next): the query chunks that have it, and
    those neighbour chunks."""
    if j == 0:
        return slice(1, n), slice(0, n - 1)
    if j == 2:
        return slice(0, n - 1), slice(1, n)
    return slice(0, n), slice(0, n)


class _ChunkExp(torch.autograd.Function):
    """Unnormalised softmax of each chunk over its neighbour chunks, with a hand-written backward.

    Inputs: flat chunks ``q`` (scaled), ``k``, ``v`` (N, m, d) and the score ``bias`` (N, m, w*m)
    (no gradient); chunk n sees chunks n - 1, n (and n + 1 when ``after``); past the ends the bias
    alone is the score (it is -inf there). Outputs ``sum_j e_j v_j`` (N, m, d), ``sum_j e_j``
    (N, m) and the row max (N, m; -inf where no key), with ``e = exp(score - row max)``. The max is
    a constant of the backward: every round's sums are rescaled by the same factor later, so the
    normalised result, and its gradient, do not depend on it.

    Each neighbour is a product of shifted slices of the same chunk arrays, and the backward
    accumulates into the gradients in place. Autograd would build the same sums from zero-filled
    copies (the backward of each neighbour slice or padding) and keep extra copies of the scores;
    at 16K tokens those copies cost about as much as the products themselves.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, after: bool, dropout_p: float):  # type: ignore[override]
        n, m = q.shape[:2]
        width = 3 if after else 2
        scores = []  # (N, m, m) per neighbour
        for j in range(width):
            part = bias[..., j * m : (j + 1) * m]
            rows, cols = _pairs(j, n)
            s = torch.empty_like(part, memory_format=torch.contiguous_format)
            torch.baddbmm(part[rows], q[rows], k[cols].transpose(1, 2), out=s[rows])
            if j != 1:  # the end chunk without this neighbour: bias only
                edge = 0 if j == 0 else n - 1
                s[edge] = part[edge]
            scores.append(s)
        top = torch.stack([s.amax(dim=-1) for s in scores]).amax(dim=0)  # (N, m)
        shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))[..., None]
        weights = [s.sub_(shift).exp_() for s in scores]
        total = weights[0].sum(dim=-1)
        for e in weights[1:]:
            total += e.sum(dim=-1)
        masks = []  # dropout: 0 or 1 / (1 - p) per weight
        if dropout_p > 0:
            keep = torch.full_like(weights[0], 1.0 - dropout_p)
            masks = [torch.bernoulli(keep).div_(1.0 - dropout_p) for _ in weights]
        kept = [e * mask for e, mask in zip(weights, masks, strict=True)] if masks else weights
        out = torch.bmm(kept[1], v)
        for j in (0, 2)[: width - 1]:
            rows, cols = _pairs(j, n)
            out[rows].baddbmm_(kept[j][rows], v[cols])
        ctx.save_for_backward(q, k, v, *weights, *masks)
        ctx.width = width
        ctx.mark_non_differentiable(top)
        return out, total, top

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_total, _d_top):  # type: ignore[override]
        q, k, v, *saved = ctx.saved_tensors
        width, n = ctx.width, q.size(0)
        weights, masks = saved[:width], saved[width:]
        d_q = d_k = d_v = None
        for j in (1, 0, 2)[:width]:  # the own chunk first: it covers every row
            rows, cols = _pairs(j, n)
            e = weights[j][rows]
            kept = e * masks[j][rows] if masks else e
            d_e = torch.bmm(d_out[rows], v[cols].transpose(1, 2))  # (N', m, m): d kept
            if masks:
                d_e.mul_(masks[j][rows])
            d_s = d_e.add_(d_total[rows, :, None]).mul_(e)  # d score = d e * e
            if d_q is None:
                d_q = torch.bmm(d_s, k)
                d_k = torch.bmm(d_s.transpose(1, 2), q)
                d_v = torch.bmm(kept.transpose(1, 2), d_out)
                continue
            d_q[rows].baddbmm_(d_s, k[cols])
            d_k[cols].baddbmm_(d_s.transpose(1, 2), q[rows])
            d_v[cols].baddbmm_(kept.transpose(1, 2), d_out[rows])
        return d_q, d_k, d_v, None, None, None


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

    Long sequences are computed a few heads at a time (:mod:`formerlab.ops.heads`); the score
    bias is the largest temporary array.
    """
    B, H, T, d = q.shape
    scale = scale if scale is not None else 1 / math.sqrt(d)
    chunked = -(-T // window) * window
    per_head = B * buckets.size(2) * chunked * (2 if causal else 3) * window * q.element_size()

    def block(q, k, v, buckets):
        return _lsh_block(q, k, v, buckets, window, causal, key_mask, scale, dropout_p)

    return over_head_blocks(block, (q, k, v, buckets), H, per_head)


def _lsh_block(q, k, v, buckets, window: int, causal: bool, key_mask, scale: float, dropout_p):
    """:func:`lsh_attention` on all of its inputs at once."""
    B, _, T, _ = q.shape
    m = window
    Tp = -(-T // m) * m  # padded to whole chunks
    valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
    valid = F.pad(valid.to(torch.bool), (0, Tp - T))
    perm, code = _sort_rounds(F.pad(buckets, (0, Tp - T)), valid)
    place = code % (2 * Tp)  # sorted place of each token (B, H, R, Tp)
    qc, kc, vc = (
        _sorted_chunks(F.pad(x, (0, 0, 0, Tp - T)), perm, place, m) for x in (q * scale, k, v)
    )
    bias = _round_bias(code, perm, m, causal, q.dtype).flatten(0, 3)  # (N, m, w*m)
    out, total, top = _ChunkExp.apply(qc, kc, vc, bias, not causal, dropout_p)
    shape = place.shape  # (B, H, R, Tp): back to token order
    flat, back = _row_index(place, 3, Tp), _row_index(perm, 3, Tp)
    out = _PermutedRows.apply(out.view(-1, q.size(-1)), flat, back, 1, 1)
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
