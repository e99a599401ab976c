"""Models assembled from configs; importing this package registers every model kind and head."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import MODEL
from . import heads
from .base import ModelConfig, TransformerConfig
from .decoder_lm import DecoderLM, DecoderLMConfig
from .encoder import Encoder, EncoderConfig
from .encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from .fit import FIT, FITConfig
from .looped import LoopedConfig, LoopedEncoder, LoopedLM, LoopedLMConfig
from .presets import list_presets, preset_dict
from .pretrained import from_pretrained, save_pretrained


def build_model(cfg: ModelConfig | dict[str, Any] | str) -> nn.Module:
    """Build a model from its config, a plain dict, or a preset name (``"gpt-small-cpu"``)."""
    if isinstance(cfg, str):
        cfg = preset_dict(cfg)
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(cfg, "model")
    return MODEL.build(cfg)


__all__ = [
    "FIT",
    "DecoderLM",
    "DecoderLMConfig",
    "Encoder",
    "EncoderConfig",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "FITConfig",
    "LoopedConfig",
    "LoopedEncoder",
    "LoopedLM",
    "LoopedLMConfig",
    "ModelConfig",
    "TransformerConfig",
    "build_model",
    "from_pretrained",
    "heads",
    "list_presets",
    "preset_dict",
    "save_pretrained",
]
