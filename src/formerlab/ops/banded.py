"""Banded (sliding-window) attention without a T x T score matrix, and its dense reference twin.

Positions are absolute: queries sit at ``q_start, q_start + 1, ...`` and keys at ``k_start, ...`` (a
decode cache may have dropped keys older than the window). Query ``i`` may attend key ``j`` when
``i - j`` is a multiple of ``dilation`` with ``-after * dilation <= i - j <= before * dilation`` and
``key_valid`` marks ``j`` as a real key. :class:`ExtraKeys` (Longformer's global tokens) join every
row's softmax with their own per-query validity.

:func:`banded_attention` cuts the queries into blocks of ``c`` and hands each block the
``c + before + after`` keys its band can reach (one strided view), so scores take
O(T * (c + before + after)) memory. Dilation is folded away first: the positions of one residue
modulo ``dilation`` form an undilated sub-sequence. Rows allowed no key give zeros, never NaN.
:func:`banded_attention_reference` builds the dense (Tq, S) mask instead (O(T^2), for tests).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.nn import functional as F

from ..errors import InputError
from .heads import over_head_blocks

MIN_BLOCK = 16


class ExtraKeys(NamedTuple):
    """Keys every query may see besides its band: k, v (B, H, G, hd); valid (B, 1 or H, Tq, G)."""

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor


def check_band(before: int, after: int, dilation: int) -> None:
    if before < 0 or after < 0 or dilation < 1:
        raise InputError(
            f"band: before={before}, after={after}, dilation={dilation}; "
            "allowed: before >= 0, after >= 0, dilation >= 1"
        )


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the allowed entries of the last dim; a row with none allowed becomes zeros.

    The mask enters as an additive 0 / -inf bias of the mask's own (often head-broadcast) shape,
    then one fused softmax: forward and backward each take a couple of passes over the scores."""
    some = allowed.any(dim=-1, keepdim=True)  # rows with no key get a zero bias, then zeros
    blocked = torch.where(some, float("-inf"), 0.0).to(scores.dtype)
    p = torch.softmax(scores + torch.where(allowed, scores.new_zeros(()), blocked), dim=-1)
    return p if bool(some.all()) else p * some


def _pad(x: torch.Tensor, dim: int, front: int, back: int, fill: float | bool) -> torch.Tensor:
    if front == 0 and back == 0:
        return x

    def block(n: int) -> torch.Tensor:
        shape = list(x.shape)
        shape[dim] = n
        return x.new_full(shape, fill)

    return torch.cat([block(front), x, block(back)], dim=dim)


def span(x: torch.Tensor, dim: int, lo: int, hi: int, fill: float | bool) -> torch.Tensor:
    """Indices ``lo .. hi - 1`` of ``x`` along ``dim``; those outside ``[0, n)`` hold ``fill``."""
    dim = dim % x.dim()
    n = x.size(dim)
    first = min(max(lo, 0), n)
    last = max(min(hi, n), first)
    front = max(0, min(hi, 0) - lo)
    core = x.narrow(dim, first, last - first)
    return _pad(core, dim, front, (hi - lo) - front - core.size(dim), fill)


def _fold(x: torch.Tensor, dim: int, start: int, d: int, fill: float | bool):
    """Group positions ``start ..`` on ``dim`` by residue mod ``d``: (.., n, ..) -> (.., d, m, ..).

    Returns the folded tensor, the sub-sequence start ``start // d`` and the front padding."""
    dim = dim % x.dim()
    front = start % d
    x = span(x, dim, -front, x.size(dim) + (-(front + x.size(dim))) % d, fill)
    x = x.unflatten(dim, (x.size(dim) // d, d)).transpose(dim, dim + 1)
    return x, start // d, front


def _unfold_rows(y: torch.Tensor, front: int, length: int) -> torch.Tensor:
    """Inverse of :func:`_fold` for outputs (B, H, d, n', hd) -> (B, H, length, hd)."""
    y = y.transpose(-3, -2).flatten(-3, -2)
    return y[..., front : front + length, :]


def _key_valid(key_valid: torch.Tensor | None, k: torch.Tensor) -> torch.Tensor:
    if key_valid is None:
        return torch.ones(1, 1, k.size(-2), dtype=torch.bool, device=k.device)
    return key_valid.to(torch.bool)[:, None, :]  # (B, 1, S)


def banded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    before: int,
    after: int,
    q_start: int = 0,
    k_start: int = 0,
    key_valid: torch.Tensor | None = None,
    dilation: int = 1,
    extra: ExtraKeys | None = None,
    dropout_p: float = 0.0,
    block: int | None = None,
) -> torch.Tensor:
    """Blocked sliding-window attention: q (B, H, Tq, hd), k/v (B, H, S, hd) -> (B, H, Tq, hd).

    ``key_valid`` (B, S) bool marks real keys; ``block`` overrides the query block size. Long
    sequences are computed a few heads at a time (:mod:`formerlab.ops.heads`)."""
    check_band(before, after, dilation)
    B, H, Tq, _ = q.shape
    reach = (block or max(before, after, MIN_BLOCK)) + before + after
    reach += 0 if extra is None else extra.k.size(-2)
    per_head = B * Tq * reach * q.element_size()  # the scores and weights of one head

    def heads(q, k, v, extra_k, extra_v, extra_valid):
        more = None if extra is None else ExtraKeys(extra_k, extra_v, extra_valid)
        return _banded(
            q, k, v, before, after, q_start, k_start, key_valid, dilation, more, dropout_p, block
        )

    parts = (None, None, None) if extra is None else tuple(extra)
    return over_head_blocks(heads, (q, k, v, *parts), H, per_head)


def _banded(q, k, v, before, after, q_start, k_start, key_valid, dilation, extra, dropout_p, block):
    """:func:`banded_attention` on all of its heads at once."""
    valid = _key_valid(key_valid, k)
    if dilation == 1:
        return _blocked(q, k, v, valid, before, after, q_start, k_start, extra, dropout_p, block)
    Tq = q.size(-2)
    q, q_sub, front = _fold(q, -2, q_start, dilation, 0.0)
    k, k_sub, _ = _fold(k, -2, k_start, dilation, 0.0)
    v, _, _ = _fold(v, -2, k_start, dilation, 0.0)
    valid, _, _ = _fold(valid, -1, k_start, dilation, False)
    if extra is not None:
        ev, _, _ = _fold(extra.valid, -2, q_start, dilation, False)
        extra = ExtraKeys(extra.k.unsqueeze(-3), extra.v.unsqueeze(-3), ev)
    y = _blocked(q, k, v, valid, before, after, q_sub, k_sub, extra, dropout_p, block)
    return _unfold_rows(y, front, Tq)


def _blocked(q, k, v, valid, before, after, q_start, k_start, extra, dropout_p, block):
    """Undilated band over leading dims (..., T, hd); ``valid`` (..., S) broadcasts over them."""
    Tq, S = q.size(-2), k.size(-2)
    before = max(0, min(before, q_start + Tq - 1 - k_start))  # farther keys do not exist
    after = max(0, min(after, k_start + S - 1 - q_start))
    c = block or min(Tq, max(before, after, MIN_BLOCK))
    nb = -(-Tq // c)
    width, lo = c + before + after, q_start - before - k_start
    hi = lo + nb * c + before + after
    kb = span(k, -2, lo, hi, 0.0).unfold(-2, width, c).transpose(-1, -2)  # (.., nb, W, hd)
    vb = span(v, -2, lo, hi, 0.0).unfold(-2, width, c).transpose(-1, -2)
    mb = span(valid, -1, lo, hi, False).unfold(-1, width, c)  # (.., nb, W)
    qs = span(q, -2, 0, nb * c, 0.0) * (1.0 / math.sqrt(q.size(-1)))  # (.., nb * c, hd)
    rel = torch.arange(width, device=q.device) - torch.arange(c, device=q.device)[:, None]
    allowed = (rel >= 0) & (rel <= before + after) & mb[..., None, :]  # (.., nb, c, W)
    if extra is not None:  # each block also holds the G extra keys: (.., nb, W + G, hd)
        kb, vb = _with_extra(kb, extra.k), _with_extra(vb, extra.v)
        ev = span(extra.valid, -2, 0, nb * c, False).unflatten(-2, (nb, c))  # (.., nb, c, G)
        lead = torch.broadcast_shapes(allowed.shape[:-1], ev.shape[:-1])
        allowed = torch.cat([allowed.expand(*lead, width), ev.expand(*lead, ev.size(-1))], -1)
    p = masked_softmax(qs.unflatten(-2, (nb, c)) @ kb.transpose(-1, -2), allowed)  # (.., nb, c, W)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    return (p @ vb).flatten(-3, -2)[..., :Tq, :]  # (.., Tq, hd)


def _with_extra(blocks: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """Append the (.., G, hd) extra keys or values to every block of (.., nb, W, hd)."""
    shared = extra.unsqueeze(-3).expand(*blocks.shape[:-2], *extra.shape[-2:])
    return torch.cat([blocks, shared], dim=-2)


def band_mask(
    q_len: int,
    k_len: int,
    *,
    before: int,
    after: int,
    q_start: int = 0,
    k_start: int = 0,
    dilation: int = 1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Dense (Tq, S) bool band: True where query may attend key (reference and tests only)."""
    check_band(before, after, dilation)
    qpos = torch.arange(q_start, q_start + q_len, device=device)
    kpos = torch.arange(k_start, k_start + k_len, device=device)
    dist = qpos[:, None] - kpos[None, :]
    return (dist <= before * dilation) & (dist >= -after * dilation) & (dist % dilation == 0)


def banded_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_valid: torch.Tensor | None = None,
    extra: ExtraKeys | None = None,
    **band: int,
) -> torch.Tensor:
    """The plain twin of :func:`banded_attention`: a dense masked score matrix, O(Tq * S). ``band``
    holds the same band keywords (``before``, ``after``, ``q_start``, ``k_start``, ``dilation``),
    passed on to :func:`band_mask`."""
    in_band = band_mask(q.size(-2), k.size(-2), device=q.device, **band)
    allowed = in_band & _key_valid(key_valid, k)[..., None, :]  # (B, 1, Tq, S)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (B, H, Tq, S)
    values = v
    if extra is not None:
        scores = torch.cat([scores, q @ extra.k.transpose(-1, -2) / math.sqrt(q.size(-1))], -1)
        lead = torch.broadcast_shapes(allowed.shape[:-1], extra.valid.shape[:-1])
        allowed = torch.cat(
            [allowed.expand(*lead, k.size(-2)), extra.valid.expand(*lead, extra.k.size(-2))], -1
        )
        values = torch.cat([v, extra.v], dim=-2)
    return masked_softmax(scores, allowed) @ values
