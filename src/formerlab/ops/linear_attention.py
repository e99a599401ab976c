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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


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
    """
    B, H, _, m = kf.shape
    if state is None:
        state = empty_state(B, H, m, v.size(-1), log_keys=log_keys, like=v)
    outs = []
    chunks = (t.split(chunk_size, dim=2) for t in (qf, kf, v))  # split: one backward for all
    for q_c, k_c, v_c in zip(*chunks, strict=True):
        out, state = _causal_chunk(q_c, k_c, v_c, state, log_keys)
        outs.append(out)
    return torch.cat(outs, dim=2), state


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
