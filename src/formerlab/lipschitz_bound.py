"""A certified upper bound on a network's Lipschitz constant, from its parts' constants.

Follows Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, 2025, "Training Transformers with
Enforced Lipschitz Constants", arXiv:2507.13338: with every weight matrix's spectral norm known, a
bound for the whole network is composed from simple rules (a module of its own because it reads
layers, ffns and models alike; the ``lipschitz`` linear kind keeps the matrices capped).

What the bound is of. ``lipschitz_bound(module)`` bounds ``||f(x) - f(y)|| / ||x - y||`` (Euclidean
norm; for a sequence, the norm of the whole ``(tokens, dim)`` array) of ``module``'s forward map in
eval mode (dropout off), for the input it takes; ``norm="token_max"`` bounds it in the norm
``max_t ||x_t||`` over the tokens instead. Every part except attention acts on each token alone
and has the same constant in both norms; attention mixes tokens, and its Euclidean constant carries
a ``sqrt(max_seq_len)`` factor that the max-over-tokens one does not. For a formerlab
``decoder_lm`` / ``encoder`` (any module with a ``transformer`` stack) it is the map from the
embedded input (token embedding plus positions, the first block's input) to the final hidden state
(after the final norm); embeddings and heads are outside it.

Rules (each an upper bound; bias terms do not change a Lipschitz constant):

- linear layers: ``σ_max(W)`` computed exactly (SVD in float64); several projections of one input
  (``ConcatLinear``) together: ``σ_max`` of their stacked matrices; a module whose class defines
  ``lipschitz_constant()`` reports its own;
- composition ``g(f(x))`` (``nn.Sequential``, the ``mlp`` FFN ``fc2(act(fc1(x)))``): the product;
- residual ``x + f(x)`` (:class:`Residual`, a Pre-norm block with ``norm: none``): ``1 + L_f``; a
  block ``x -> x + ffn(x + attn(x))`` therefore gets ``(1 + L_attn)(1 + L_ffn)``;
- elementwise activations: ``sup |φ'|``. ReLU 1. Exact GELU ``x Φ(x)``: its derivative
  ``Φ(x) + x φ(x)`` peaks where ``φ(x)(2 - x^2) = 0``, at ``x = sqrt(2)``, with value
  ``Φ(sqrt 2) + sqrt(2) φ(sqrt 2) = 1.12890...`` (the minimum, -0.1289, is smaller in magnitude).
  SiLU ``x σ(x)``: ``sup σ(x)(1 + x(1 - σ(x))) = 1.09984`` at ``x ≈ 2.3994``, rounded up to 1.1.
  Squared ReLU has no global constant and is refused;
- the ``none`` norm, identity and dropout (eval): 1;
- the bounded attention kind ``lipschitz``
  (:class:`~formerlab.layers.attention.lipschitz.LipschitzAttention`, which projects its input
  tokens onto a ball and scales scores by ``1/d``): the constant derived in that module from its
  measured per-head spectral norms and biases. A norm-free ``decoder_lm`` / ``encoder`` with this
  attention (``norm: none``, MLP FFNs with relu/gelu/silu) therefore gets a bound valid for every
  input.

Refused with a :class:`~formerlab.errors.ConfigError` naming the part: softmax (dot-product)
attention and every other attention kind, which are not globally Lipschitz (Kim, Papamakarios, Mnih,
2021, "The Lipschitz Constant of Self-Attention", arXiv:2006.04710); cross-attention; normalization
layers other than ``none`` (LayerNorm and RMSNorm divide by the input's scale, unbounded near zero);
anything unknown.

Differences from the paper: the residual is ``x + f(x)`` (bound ``1 + L_f``), not the paper's convex
combination ``(1 - a) x + a f(x)``; the attention constant is derived for the Euclidean and
max-over-tokens norms (see the attention module), not from modula's sensitivities. Spectral norms
are measured, not assumed to equal the cap, so the bound is tighter than ``c`` per matrix whenever a
matrix is inside its ball; linear layers of any kind are accepted (their norm is measured), so a
``lipschitz`` linear kind is what keeps the bound from growing during training, not a requirement.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import join
from .errors import ConfigError
from .layers.attention.lipschitz import NORMS, LipschitzAttention
from .layers.block import TransformerBlock
from .layers.ffn.mlp import MLP
from .layers.linear import ConcatLinear
from .layers.linear.lipschitz import spectral_norm as sigma_max

_SQRT2 = math.sqrt(2.0)
#: sup |d/dx x Φ(x)| = Φ(√2) + √2 φ(√2), plus a hair for rounding
GELU_LIPSCHITZ = 0.5 * (1.0 + math.erf(1.0)) + _SQRT2 * math.exp(-1.0) / math.sqrt(2 * math.pi)
GELU_LIPSCHITZ += 1e-12
#: sup d/dx x σ(x) = 1.09984 (at x ≈ 2.3994), rounded up
SILU_LIPSCHITZ = 1.1

#: elementwise activations (functions used by the ``mlp`` FFN and their nn.Module forms)
ACTIVATION_LIPSCHITZ = {
    nn.functional.relu: 1.0,
    nn.functional.gelu: GELU_LIPSCHITZ,
    nn.functional.silu: SILU_LIPSCHITZ,
}
_MODULE_LIPSCHITZ = {nn.ReLU: 1.0, nn.SiLU: SILU_LIPSCHITZ, nn.Identity: 1.0, nn.Dropout: 1.0}


class Residual(nn.Module):
    """``x + f(x)``: a residual connection without normalization (bound ``1 + L_f``)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


def lipschitz_bound(module: nn.Module, path: str = "model", *, norm: str = "euclidean") -> float:
    """A certified upper bound on ``module``'s Lipschitz constant in ``norm`` ("euclidean" |
    "token_max"; see the module docstring); ``path`` names the module in error messages."""
    if norm not in NORMS:
        raise ConfigError(f"norm: {norm!r}; allowed: {', '.join(NORMS)}")
    return _bound(module, path, norm)


def _bound(module: nn.Module, path: str, norm: str) -> float:
    if isinstance(module, LipschitzAttention):
        return module.lipschitz_constant(norm)
    if getattr(type(module), "lipschitz_constant", None) is not None:
        return float(module.lipschitz_constant())
    if isinstance(module, ConcatLinear):
        return sigma_max(torch.cat([_matrix(p, join(path, "parts")) for p in module.parts]))
    if isinstance(module, nn.Linear) or callable(getattr(module, "effective_weight", None)):
        return sigma_max(_matrix(module, path))
    if isinstance(module, Residual):
        return 1.0 + _bound(module.fn, join(path, "fn"), norm)
    if isinstance(module, nn.Sequential):
        return math.prod(_bound(m, join(path, str(i)), norm) for i, m in enumerate(module))
    if isinstance(module, MLP):
        act = _activation(module.act, join(path, "activation"))
        fc1 = _bound(module.fc1, join(path, "fc1"), norm)
        return fc1 * act * _bound(module.fc2, join(path, "fc2"), norm)
    if isinstance(module, TransformerBlock):
        return _block_bound(module, path, norm)
    if isinstance(getattr(module, "transformer", None), nn.Module):
        return _stack_bound(module.transformer, join(path, "transformer"), norm)
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return GELU_LIPSCHITZ
    if type(module) in _MODULE_LIPSCHITZ:
        return _MODULE_LIPSCHITZ[type(module)]
    return _by_config(module, path)


def _matrix(linear: nn.Module, path: str) -> torch.Tensor:
    weight = getattr(linear, "effective_weight", None)
    if callable(weight):
        return weight()
    if isinstance(linear, nn.Linear):
        return linear.weight
    raise ConfigError(f"{path}: {type(linear).__name__} has no effective_weight(); allowed: linear")


def _activation(fn: object, path: str) -> float:
    if fn in ACTIVATION_LIPSCHITZ:
        return ACTIVATION_LIPSCHITZ[fn]
    name = getattr(fn, "__name__", repr(fn))
    raise ConfigError(
        f"{path}: activation {name!r} has no global Lipschitz constant here; allowed: relu, gelu, "
        "silu"
    )


def _block_bound(block: TransformerBlock, path: str, norm: str) -> float:
    """A block with ``none`` norms: ``(1 + L_attn)(1 + L_ffn)`` (any placement is then the same
    ``x + f(x)`` twice)."""
    if block.cross_attn is not None:
        _by_config(block.cross_attn, join(path, "cross_attn"))
    for name in ("attn_norm", "attn_out_norm", "ffn_norm", "ffn_out_norm"):
        layer = getattr(block, name)
        if layer is not None:
            _bound(layer, join(path, name), norm)  # refuses any real normalization
    attn = _bound(block.attn, join(path, "attn"), norm)
    return (1.0 + attn) * (1.0 + _bound(block.ffn, join(path, "ffn"), norm))


def _stack_bound(stack: nn.Module, path: str, norm: str) -> float:
    """Embedded input -> final hidden state: the blocks' bounds times the final norm's."""
    bound = 1.0
    for i, block in enumerate(stack.blocks):
        bound *= _bound(block, f"{path}.blocks.{i}", norm)
    return bound * _bound(stack.final_norm, join(path, "final_norm"), norm)


def _by_config(module: nn.Module, path: str) -> float:
    """1 for the ``none`` norm; otherwise a ConfigError naming the part and why it has no bound."""
    cfg = getattr(module, "config", None)
    group, kind = getattr(cfg, "group", ""), getattr(cfg, "kind", "")
    if group == "norm" and kind == "none":
        return 1.0
    if group == "attention":
        why = (
            f"attention kind {kind!r} is not globally Lipschitz (Kim et al. 2021, "
            "arXiv:2006.04710); allowed: attention kind 'lipschitz' (arXiv:2507.13338)"
        )
    elif group == "norm":
        why = f"norm kind {kind!r} is not globally Lipschitz (it divides by the input's scale)"
    else:
        why = f"no Lipschitz bound is known for {type(module).__name__}"
    raise ConfigError(
        f"{path}: {why}; allowed: linear layers, relu/gelu/silu, residual MLPs, norm 'none' and "
        "attention 'lipschitz'"
    )
