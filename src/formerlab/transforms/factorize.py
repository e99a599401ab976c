"""Factorize a trained model's dense projections: ``factorize_lowrank`` (truncated SVD, the Low-Rank
Transformer) and ``factorize_dense_sparse`` (dense basis × semi-structured sparse codes, DSFormer).

Papers: Cahyawijaya, 2021, "Greenformers: Improving Computation and Memory Efficiency in Transformer
Models via Low-Rank Approximation", arXiv:2108.10808; Chand, Prabhu, Kumar, 2023, "DSFormer:
Effective Compression of Text-Transformers by Dense-Sparse Weight Factorization", arXiv:2312.13211.

Every dense projection of the ``include``\\ d parts (``attention``, ``cross_attention`` where the
model has it, ``ffn``; all by default) is replaced by the factorized linear kind, initialised from its
weight ``W`` (out × in) with ``W = P Σ Qᵀ`` (SVD, singular values in decreasing order):

- ``factorize_lowrank``: ``U = P_r Σ_r^(1/2)``, ``V = Σ_r^(1/2) Q_rᵀ`` — the best rank-r
  approximation (Eckart–Young: ``‖W - U V‖_F² = Σ_{i>r} σ_i²``), the square roots split evenly.
- ``factorize_dense_sparse``: the basis is the first ``k`` left singular vectors ``P_k``; the latent
  codes are the projections ``C = P_kᵀ W``, and the layer keeps the ``s`` largest ``|C|`` of each
  column. Because the basis is orthonormal, those ``s`` terms are the best ``s``-term code of each
  column in that basis (the dropped coefficients are exactly the error), so the error can only fall
  as ``s`` grows, and ``k = s = min(in, out)`` is exact. ``D`` and ``C`` are rescaled by
  ``β = sqrt(mean σ_1..k)`` and ``1/β`` so the two factors have similar scales. This is a
  task-unaware, SVD-based start (the paper's role for its initialisation), not OMP. A basis wider
  than ``out`` is completed by zero columns, which training cannot revive (their rows of ``S`` and
  columns of ``D`` get no gradient): keep ``k <= out``.

The new model's config sets ``attention.linear``, ``cross_attention.linear``, ``ffn.linear`` (and
every ``layer_ffns`` entry), so ``build_model(new.config)`` rebuilds it and ``save_pretrained`` /
``from_pretrained`` round-trip; heads and embeddings stay as they were. Projections that are not
dense are refused.

Differences from the papers: the thesis trains LRT models from scratch as well; DSFormer's own
initialisation and block layout are not reproduced exactly (see above); fine-tuning with the
straight-through factorizer is ordinary training of the new model (``support: stf``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..config import join, param
from ..errors import ConfigError
from ..layers.block import part_linear
from ..layers.linear import (
    ConcatLinear,
    DenseSparseConfig,
    DenseSparseLinear,
    LowRankConfig,
    LowRankLinear,
)
from ..layers.linear.dense_sparse import DEFAULT_RATIO, top_s_mask
from ..registry import TRANSFORM
from .base import TransformConfig

PATH = "transform"
PARTS = ("attention", "cross_attention", "ffn")


def _check_include(include: list[str], path: str) -> None:
    where = join(path, "include")
    if not include or len(set(include)) != len(include):
        raise ConfigError(f"{where}: {include!r}; allowed: a non-empty list of distinct parts")
    for i, part in enumerate(include):
        if part not in PARTS:
            raise ConfigError(f"{join(where, i)}: {part!r}; allowed: {', '.join(PARTS)}")


@dataclass(kw_only=True)
class FactorizeLowRankConfig(TransformConfig):
    kind = "factorize_lowrank"
    rank: int | None = param(None, doc="inner width of every factorized projection")
    ratio: float = param(DEFAULT_RATIO, doc="fraction of each dense weight kept (rank null)")
    include: list[str] = param(
        factory=lambda: list(PARTS),
        doc="parts: attention, cross_attention (models that have it), ffn",
    )

    def validate(self, path: str = "") -> None:
        self.linear_config(path)
        _check_include(self.include, path)

    def linear_config(self, path: str = PATH) -> LowRankConfig:
        return LowRankConfig.from_dict({"rank": self.rank, "ratio": self.ratio}, path)


@dataclass(kw_only=True)
class FactorizeDenseSparseConfig(TransformConfig):
    kind = "factorize_dense_sparse"
    basis: int | None = param(None, doc="basis width k of every factorized projection")
    ratio: float = param(DEFAULT_RATIO, doc="fraction of each dense weight kept (basis null)")
    nonzeros: int = param(2, doc="non-zeros s per column of the sparse factor")
    support: Literal["stf", "fixed"] = param("stf", doc="training mode of the support")
    include: list[str] = param(
        factory=lambda: list(PARTS),
        doc="parts: attention, cross_attention (models that have it), ffn",
    )

    def validate(self, path: str = "") -> None:
        self.linear_config(path)
        _check_include(self.include, path)

    def linear_config(self, path: str = PATH) -> DenseSparseConfig:
        fields = ("basis", "ratio", "nonzeros", "support")
        return DenseSparseConfig.from_dict({f: getattr(self, f) for f in fields}, path)


# ---------------------------------------------------------------------------------------------
# The factors of one matrix (pure functions, float64 inside)


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, V)`` with ``U V`` the best rank-``rank`` approximation of ``weight`` (out, in)."""
    w = weight.detach().double()
    p, sigma, qh = torch.linalg.svd(w, full_matrices=False)
    r = min(rank, sigma.numel())
    root = sigma[:r].sqrt()
    u = torch.zeros(w.shape[0], rank, dtype=w.dtype)
    v = torch.zeros(rank, w.shape[1], dtype=w.dtype)
    u[:, :r] = p[:, :r] * root
    v[:r] = root[:, None] * qh[:r]
    return u.to(weight.dtype), v.to(weight.dtype)


def dense_sparse_factors(
    weight: torch.Tensor, basis: int, nonzeros: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(D, S_latent, mask)``: SVD basis, its projection codes, and their per-column top-s."""
    w = weight.detach().double()
    p, sigma, _ = torch.linalg.svd(w, full_matrices=True)
    k = min(basis, p.shape[1])
    d = torch.zeros(w.shape[0], basis, dtype=w.dtype)
    d[:, :k] = p[:, :k]
    codes = d.T @ w  # (basis, in): exact coefficients in the orthonormal basis
    scale = sigma[: min(k, sigma.numel())].mean().clamp_min(1e-12).sqrt()
    mask = top_s_mask(codes, nonzeros)
    return (d * scale).to(weight.dtype), (codes / scale).to(weight.dtype), mask


# ---------------------------------------------------------------------------------------------
# Applying them to a model


def _dense_sources(
    state: dict[str, torch.Tensor], new: nn.Module, kind: type
) -> dict[str, tuple[str, slice]]:
    """New factorized module name -> (old dense module name, its rows). A projection built fused in
    the old model (q, k, v in one dense layer) is a ``ConcatLinear`` of parts in the new one."""
    sources: dict[str, tuple[str, slice]] = {}
    for name, module in new.named_modules():
        if isinstance(module, ConcatLinear) and f"{name}.weight" in state:
            start = 0
            for i, part in enumerate(module.parts):
                if isinstance(part, kind):
                    sources[f"{name}.parts.{i}"] = (name, slice(start, start + part.out_features))
                start += part.out_features
        elif isinstance(module, kind) and f"{name}.weight" in state:
            sources[name] = (name, slice(None))
    return sources


def _require_dense(model: nn.Module, include: list[str]) -> Any:
    """The model config; ConfigError when a part to factorize is not dense."""
    cfg = getattr(model, "config", None)
    if cfg is None or not all(hasattr(cfg, part) for part in ("attention", "ffn")):
        raise ConfigError(
            f"{join(PATH, 'kind')}: needs a formerlab transformer model with attention and ffn "
            f"parts (got {type(model).__name__})"
        )
    for part in (p for p in include if hasattr(cfg, p)):
        per_layer = getattr(cfg, "layer_ffns", None) if part == "ffn" else None
        configs = [getattr(cfg, part), *(per_layer or [])]
        for part_cfg in configs:
            linear = part_linear(part_cfg, cfg)
            if linear.kind != "dense":
                raise ConfigError(
                    f"model.{part}.linear.kind: {linear.kind!r}; the factorize transforms need "
                    "dense projections; allowed: 'dense'"
                )
    return cfg


def _with_linear(cfg: Any, include: list[str], linear: Any) -> Any:
    """``cfg`` with ``linear`` as the linear kind of every included part."""
    changes: dict[str, Any] = {}
    for part in ("attention", "cross_attention"):
        if part in include and hasattr(cfg, part):
            changes[part] = getattr(cfg, part).replace(linear=linear)
    if "ffn" in include:
        changes["ffn"] = cfg.ffn.replace(linear=linear)
        if getattr(cfg, "layer_ffns", None) is not None:
            changes["layer_ffns"] = [f.replace(linear=linear) for f in cfg.layer_ffns]
    return cfg.replace(**changes)


def factorize_model(
    model: nn.Module, include: list[str], linear: Any, kind: type, factor
) -> nn.Module:
    """A new model whose included parts use ``linear`` (of module class ``kind``), each layer's
    state from ``factor(module, W)`` -> {tensor name: value}; ``model`` is left untouched."""
    from ..models import build_model

    cfg = _require_dense(model, include)
    new = build_model(_with_linear(cfg, include, linear))
    ref = next(model.parameters())
    new.to(device=ref.device, dtype=ref.dtype)
    state = model.state_dict()
    sources = _dense_sources(state, new, kind)
    if not sources:
        raise ConfigError(f"{join(PATH, 'include')}: {include!r} selects no dense projection")
    dense = {}
    for old_name, _ in sources.values():
        if old_name not in dense:
            dense[old_name] = (state.pop(f"{old_name}.weight"), state.pop(f"{old_name}.bias", None))
    for name, (old_name, rows) in sources.items():
        w, b = dense[old_name]
        for key, value in factor(new.get_submodule(name), w[rows]).items():
            state[f"{name}.{key}"] = value
        if b is not None:
            state[f"{name}.bias"] = b[rows]
    new.load_state_dict(state)
    return new.train(model.training)


@TRANSFORM.register(FactorizeLowRankConfig)
def FactorizeLowRank(cfg: FactorizeLowRankConfig, *, model: nn.Module) -> nn.Module:
    """Replace the included dense projections by truncated-SVD ``lowrank`` layers."""

    def factor(layer: LowRankLinear, w: torch.Tensor) -> dict[str, torch.Tensor]:
        u, v = svd_factors(w, layer.rank)
        return {"U": u, "V": v}

    return factorize_model(model, cfg.include, cfg.linear_config(), LowRankLinear, factor)


@TRANSFORM.register(FactorizeDenseSparseConfig)
def FactorizeDenseSparse(cfg: FactorizeDenseSparseConfig, *, model: nn.Module) -> nn.Module:
    """Replace the included dense projections by SVD-initialised ``dense_sparse`` layers."""

    def factor(layer: DenseSparseLinear, w: torch.Tensor) -> dict[str, torch.Tensor]:
        d, latent, mask = dense_sparse_factors(w, layer.basis, layer.nonzeros)
        out = {"D": d, "S_latent": latent}
        if not layer.straight_through:
            out["mask"] = mask
        return out

    return factorize_model(model, cfg.include, cfg.linear_config(), DenseSparseLinear, factor)
