"""Linear kind ``lipschitz``: a dense layer whose spectral norm is kept at most ``max_norm`` (c).

Paper: Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, 2025, "Training Transformers with
Enforced Lipschitz Constants", arXiv:2507.13338. A layer ``x -> W x + b`` is ``σ_max(W)``-Lipschitz
in the Euclidean norm, so capping every weight matrix (and knowing each activation's constant)
certifies a bound for the whole network (:mod:`formerlab.lipschitz_bound`). The constraint is
enforced at initialisation and re-imposed after every optimizer step through the trainer's
``after_optimizer_step`` hook, so it holds throughout training, not only at the start.

Methods (``method``):

- ``normalize``: spectral normalization as the paper uses it, ``W <- W / max(1, σ_max(W) / c)``: a
  matrix inside the ball is left alone, one outside is scaled back onto its surface (every singular
  value shrinks by the same factor).
- ``svd_cap``: ``W <- U min(S, c) V^T``: only the singular values above c are clipped to c, the rest
  are kept. This is the exact operation the paper's "spectral hard cap" approximates with odd
  polynomials (its ``pure_svd`` reference); here it is computed with a full SVD.

σ_max is computed exactly (``torch.linalg.matrix_norm(ord=2)``, an SVD in float64): affordable at
the sizes formerlab trains on a CPU, and it makes the bound exact rather than a power-iteration
estimate. The projected matrix is rounded back to the parameter's dtype; to keep the rounded matrix
inside the ball, the target is ``c * (1 - eps * sqrt(min(out, in)))`` (eps: the dtype's machine
epsilon), which bounds the spectral norm of the rounding error (at most ``eps/2 * ||W||_F``).

Differences from the paper: σ_max by exact SVD instead of power iteration; the paper's spectral soft
cap (an odd polynomial whose strength is coupled to the optimizer's learning rate and weight decay)
and the "spectral hammer" are not implemented, nor torch's ``spectral_norm`` parametrization (its σ
is a power-iteration estimate, so its bound is not certified); the paper additionally constrains the
embedding and unembedding rows, which here stay ordinary parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...config import join, param
from ...errors import ConfigError
from ...registry import LINEAR
from ...threads import torch_threads
from .base import LinearConfig


@dataclass(kw_only=True)
class LipschitzConfig(LinearConfig):
    kind = "lipschitz"
    max_norm: float = param(1.0, doc="c: the cap on the spectral norm sigma_max(W) of the weight")
    method: Literal["normalize", "svd_cap"] = param(
        "normalize",
        doc="normalize: W / max(1, sigma_max/c) (spectral normalization); "
        "svd_cap: clip the singular values above c to c",
    )

    def validate(self, path: str = "") -> None:
        if not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ConfigError(
                f"{join(path, 'max_norm')}: invalid value {self.max_norm!r}; allowed: a finite "
                "number > 0"
            )


def spectral_norm(weight: torch.Tensor) -> float:
    """σ_max of a matrix, computed exactly (SVD) in float64."""
    # LAPACK on one thread: for these small matrices threads do not help, and on a loaded machine
    # OpenMP's spin-waiting made an SVD up to 1000x slower (measured: 0.4 s vs 0.4 ms, 128 x 32)
    with torch_threads(1):
        return float(torch.linalg.matrix_norm(weight.detach().double(), ord=2))


def _target(weight: torch.Tensor, cap: float) -> float:
    """The cap, lowered by a bound on the rounding error of storing the result in its dtype."""
    eps = torch.finfo(weight.dtype).eps
    return cap * (1.0 - eps * math.sqrt(min(weight.shape)))


def project_(weight: torch.Tensor, cap: float, method: str) -> None:
    """Bring ``weight`` (in place) inside the spectral ball of radius ``cap``; a no-op inside it."""
    w = weight.detach().double()
    sigma, target = spectral_norm(w), _target(weight, cap)
    if sigma <= target:
        return
    if method == "normalize":
        projected = w * (target / sigma)
    else:
        with torch_threads(1):  # one thread, as in spectral_norm
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
        projected = (u * s.clamp(max=target)) @ vh
    weight.detach().copy_(projected)


@LINEAR.register(LipschitzConfig)
class LipschitzLinear(nn.Module):
    """``y = x W^T + b`` with ``σ_max(W) <= max_norm`` after init and after every optimizer step."""

    paper = (
        "Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, 2025, Training Transformers with "
        "Enforced Lipschitz Constants, arXiv:2507.13338"
    )
    fusable = False  # the cap applies to each projection's own matrix

    def __init__(
        self, cfg: LipschitzConfig, *, in_features: int, out_features: int, bias: bool = True
    ):
        super().__init__()
        self.config = cfg
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        reference = nn.Linear(in_features, out_features, bias=bias)  # torch's default init
        with torch.no_grad():
            self.weight.copy_(reference.weight)
            if self.bias is not None:
                self.bias.copy_(reference.bias)
        self.after_optimizer_step()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def init_normal_(self, std: float) -> None:
        """Normal(0, std) weights and zero bias, then projected into the ball."""
        with torch.no_grad():
            nn.init.normal_(self.weight, mean=0.0, std=std)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        self.after_optimizer_step()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Re-impose ``σ_max(W) <= max_norm`` (called by the trainer after each optimizer step)."""
        project_(self.weight, self.config.max_norm, self.config.method)

    def effective_weight(self) -> torch.Tensor:
        return self.weight

    def lipschitz_constant(self) -> float:
        """σ_max of the weight (exact): the layer's Lipschitz constant in the Euclidean norm."""
        return spectral_norm(self.weight)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, max_norm={c.max_norm:g}, method={c.method}"
        )
