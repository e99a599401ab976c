"""Bounded (Lipschitz) attention: Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, 2025,
"Training Transformers with Enforced Lipschitz Constants", arXiv:2507.13338.

Softmax attention is not globally Lipschitz (Kim, Papamakarios, Mnih, 2021, arXiv:2006.04710): its
scores ``q·k`` grow with the square of the input. The paper's transformer keeps it bounded with
three choices, read from its code (``phess2/lipschitz-transformers``: ``modula/bond.py``
``AttentionQK`` and ``modula/compound.py`` ``Attention``; ``nanogpt/train_spectral_normalize.py``
``CausalSelfAttention``): scores scaled by ``1/d`` instead of ``1/sqrt(d)`` (Large et al. 2024,
arXiv:2405.14813), the head outputs multiplied by ``1/3`` before the output projection, and every
weight matrix norm-capped; its certificate (modula's sensitivity calculus, in the max-over-tokens
RMS norm) assumes unit-norm inputs, which the paper does not enforce. Here the input domain is
enforced: every token is first projected onto the ball ``||x_t|| <= R`` with
``R = max_rms * sqrt(dim)`` (``x_t min(1, R / ||x_t||)``, a non-expansive map), so the constant
below holds for all inputs. Per head (queries ``q_t = W_q x̃_t + b_q``, etc., ``d = head_dim``)::

    y_t = sum_s softmax_s(q_t·k_s / d) v_s,    out = W_o concat_h(out_scale * y^h) + b_o

Lipschitz constant (proof sketch; ``σ`` = spectral norm of the head's slice of a matrix,
``B_q = σ_q R + ||b_q||`` bounds every ``||q_t||``, likewise ``B_k``, ``B_v``): for two inputs,
``Δy_t = Σ_s p_ts Δv_s + Σ_s Δp_ts v'_s``. Softmax is 1-Lipschitz from ℓ∞ to ℓ1 (its Jacobian
``diag(p) - p pᵀ`` maps ``u`` to a vector of ℓ1 norm ``Σ p_i |u_i - p·u| <= ||u||_∞``), and
``|Δs_ts| <= (σ_q B_k ||Δx_t|| + B_q σ_k ||Δx_s||) / d``. Hence, with ``δ_t = ||Δx_t||``:

- max-over-tokens norm ``max_t ||x_t||`` (``norm="token_max"``):
  ``L_h = σ_v + B_v (σ_q B_k + B_q σ_k) / d``;
- Euclidean norm of the whole (T, D) array (``norm="euclidean"``; a row-stochastic ``P`` has
  ``||P||_2 <= sqrt(T)``, attained when every query attends to one key):
  ``L_h = sqrt(T) σ_v + B_v (σ_q B_k + sqrt(T) B_q σ_k) / d`` with ``T = max_seq_len``;

and for the layer ``out_scale · σ_max(W_o) · sqrt(Σ_h L_h²)`` (biases of ``W_o`` do not count).
Rotary positions rotate each ``q_t``, ``k_t`` orthogonally and leave all of this unchanged.

Differences from the paper: the per-token projection onto the ball (the paper assumes the domain;
here it is part of the model, so the bound is certified for any input); the bound above is derived
for the Euclidean and max-over-tokens norms instead of taken from modula's RMS-norm sensitivities;
``out_scale`` (default 1/3, as the paper) and ``max_rms`` are hyperparameters; biases are allowed
and counted; no grouped-query heads and no cross-attention. The paper's residual is a convex
combination ``(1 - a) x + a f(x)``; formerlab's block keeps ``x + f(x)`` (bound ``1 + L_f``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ...config import join, param
from ...errors import ConfigError
from ...ops.masks import sdpa_mask
from ...registry import ATTENTION
from ..linear.lipschitz import spectral_norm
from .base import AttentionConfig
from .cache import KVCache
from .projected import ProjectedAttention

#: norms the constant is given for (see the module docstring)
NORMS = ("euclidean", "token_max")


@dataclass(kw_only=True)
class LipschitzAttentionConfig(AttentionConfig):
    kind = "lipschitz"
    max_rms: float = param(
        1.0, doc="tokens are projected onto ||x_t|| <= max_rms * sqrt(dim) before q, k, v"
    )
    out_scale: float = param(
        1.0 / 3.0, doc="factor on the head outputs before the output projection (paper: 1/3)"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        for name in ("max_rms", "out_scale"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(
                    f"{join(path, name)}: invalid value {value!r}; allowed: a finite number > 0"
                )


def project_to_ball(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Each token (last dim) scaled onto the ball of ``radius`` if outside it (non-expansive)."""
    norm = x.norm(dim=-1, keepdim=True)
    return x * torch.clamp(radius / norm.clamp_min(torch.finfo(x.dtype).tiny), max=1.0)


@ATTENTION.register(LipschitzAttentionConfig)
class LipschitzAttention(ProjectedAttention):
    """Tokens projected onto a ball, ``softmax(Q Kᵀ / d) V · out_scale`` per head, with a
    certified Lipschitz constant (:meth:`lipschitz_constant`)."""

    paper = (
        "Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, 2025, Training Transformers with "
        "Enforced Lipschitz Constants, arXiv:2507.13338"
    )
    supports_causal = True
    supports_padding_mask = True
    supports_kv_cache = True  # the projection is per token: cached keys/values stay valid

    def __init__(self, cfg: LipschitzAttentionConfig, *, dim: int, cross: bool = False, **dims):
        if cross:
            raise ConfigError("attention 'lipschitz' lacks supports_cross (self-attention only)")
        super().__init__(cfg, dim=dim, **dims)
        self.radius = cfg.max_rms * math.sqrt(dim)

    @property
    def stream_ports(self):
        """Refused (layers/block.py ``stream_ports``): the input passes the ball projection before
        the q/k/v projections, so norms cannot be folded into them and a compressed (crmsnorm)
        stream would change the token norms the projection reads."""
        raise ConfigError(
            "attention 'lipschitz': its input is projected onto a ball before the q/k/v "
            "projections, so it has no linear stream input ports (no norm folding, no compressed "
            "crmsnorm stream); allowed with it: norm kinds without a compressed stream"
        )

    def project(self, x, context, cache, key_mask=None):
        return super().project(project_to_ball(x, self.radius), context, cache, key_mask)

    def attend(self, q, k, v, *, key_mask, cache):
        if cache is not None:
            k, v = cache.setdefault("kv", KVCache()).update(k, v)
        mask, is_causal = sdpa_mask(q.size(2), k.size(2), causal=self.causal, key_mask=key_mask)
        dropout_p = self.config.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
            scale=1.0 / self.head_dim,
        )  # (B, nh, T, hd)  # fmt: skip
        return y * self.config.out_scale

    def qkv_parts(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(weight, bias) of the query, key and value projections (fused ones split by rows)."""
        parts = getattr(self.qkv_proj, "parts", None)
        if parts is not None:
            return [(_weight(p), p.bias) for p in parts]
        w, b = _weight(self.qkv_proj), self.qkv_proj.bias
        n = self.num_heads * self.head_dim
        return [(w[i * n : (i + 1) * n], None if b is None else b[i * n : (i + 1) * n])
                for i in range(3)]  # fmt: skip

    @torch.no_grad()
    def lipschitz_constant(self, norm: str = "euclidean") -> float:
        """A certified Lipschitz constant of this layer (eval mode) in ``norm`` (see the module
        docstring)."""
        if norm not in NORMS:
            raise ConfigError(f"norm: {norm!r}; allowed: {', '.join(NORMS)}")
        root_t = math.sqrt(self.max_seq_len) if norm == "euclidean" else 1.0
        d, total = self.head_dim, 0.0
        for h in range(self.num_heads):
            rows = slice(h * d, (h + 1) * d)
            (sq, bq), (sk, bk), (sv, bv) = (
                (spectral_norm(w[rows]), 0.0 if b is None else float(b[rows].double().norm()))
                for w, b in self.qkv_parts()
            )
            big_q, big_k, big_v = (s * self.radius + b for s, b in ((sq, bq), (sk, bk), (sv, bv)))
            head = root_t * sv + big_v * (sq * big_k + root_t * big_q * sk) / d
            total += head * head
        return self.config.out_scale * spectral_norm(_weight(self.out_proj)) * math.sqrt(total)


def _weight(linear: torch.nn.Module) -> torch.Tensor:
    weight = getattr(linear, "effective_weight", None)
    return weight() if callable(weight) else linear.weight
