"""Registered model transforms: ``formerlab.transform(model, {"kind": ...})`` returns a NEW model whose
``.config`` describes it; the input model is left untouched. Conversions, growth, extraction and
compression all come in through this one entry point."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import KindConfig
from ..registry import TRANSFORM
from .base import TransformConfig
from .factorize import (
    FactorizeDenseSparse,
    FactorizeDenseSparseConfig,
    FactorizeLowRank,
    FactorizeLowRankConfig,
)
from .matformer_extract import MatFormerExtract, MatFormerExtractConfig
from .norm_conversion import PreLNToCRMSNormConfig, PreLNToRMSNormConfig, convert_pre_ln
from .tokenformer_grow import TokenFormerGrow, TokenFormerGrowConfig
from .untie import UntieEmbeddings, UntieEmbeddingsConfig


def transform(model: nn.Module, spec: TransformConfig | dict[str, Any] | str) -> nn.Module:
    """Apply the registered transform ``spec["kind"]`` to ``model`` and return the new model."""
    if not isinstance(spec, KindConfig):
        spec = TransformConfig.from_dict(spec, "transform")
    return TRANSFORM.build(spec, model=model)


__all__ = [
    "FactorizeDenseSparse",
    "FactorizeDenseSparseConfig",
    "FactorizeLowRank",
    "FactorizeLowRankConfig",
    "MatFormerExtract",
    "MatFormerExtractConfig",
    "PreLNToCRMSNormConfig",
    "PreLNToRMSNormConfig",
    "TokenFormerGrow",
    "TokenFormerGrowConfig",
    "TransformConfig",
    "UntieEmbeddings",
    "UntieEmbeddingsConfig",
    "convert_pre_ln",
    "transform",
]
