"""Untie a model's output head from its token embedding: same function, separate parameters.

The new model computes exactly the same outputs; the head can then be trained, pruned or quantised
on its own. Works for every model kind with ``tie_embeddings`` (decoder_lm, encoder_decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..registry import TRANSFORM
from .base import TransformConfig


@dataclass(kw_only=True)
class UntieEmbeddingsConfig(TransformConfig):
    kind = "untie_embeddings"


@TRANSFORM.register(UntieEmbeddingsConfig)
def UntieEmbeddings(cfg: UntieEmbeddingsConfig, *, model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with ``tie_embeddings: false`` and the head initialised to the
    embedding matrix."""
    from ..models import build_model

    if not getattr(model.config, "tie_embeddings", False):
        raise ConfigError(
            f"transform.kind: untie_embeddings needs a model with tie_embeddings: true "
            f"(model kind {model.config.kind!r} has it false or lacks it)"
        )
    new = build_model(model.config.replace(tie_embeddings=False))
    state = model.state_dict()
    embed_key = next(k for k in state if k.endswith("embed.weight"))
    state["lm_head.weight"] = state[embed_key].clone()
    new.load_state_dict(state)
    return new.to(next(model.parameters()).dtype).train(model.training)
