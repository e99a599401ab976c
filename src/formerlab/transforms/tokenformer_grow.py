"""Grow every Pattention layer of a model by ``add_tokens`` parameter tokens (TokenFormer scaling).

Paper: Haiyang Wang, Yue Fan, Muhammad Ferjad Naeem, Yongqin Xian, Jan Eric Lenssen, Liwei Wang,
Federico Tombari, Bernt Schiele, 2024 (ICLR 2025), "TokenFormer: Rethinking Transformer Scaling with
Tokenized Model Parameters", arXiv:2410.23168, §3.3 (progressive model scaling: append new key and
value parameter tokens, new keys initialised to zero, and continue training).

``fl.transform(model, {"kind": "tokenformer_grow", "add_tokens": m})`` returns a NEW model (the
input is left untouched) in which every :class:`~formerlab.layers.linear.pattention.Pattention`
holds ``m`` more tokens: its config records the growth (``grown_tokens`` gains ``m`` in every
``pattention`` linear config of the model, model-wide and per part), so
``fl.build_model(new.config)`` builds the same shapes, ``load_state_dict`` round-trips and
``save_pretrained`` / ``from_pretrained`` work. Each layer keeps its scale ``τ = √tokens`` (see the
layer's docstring), so with zero new keys the grown model computes exactly the old function: new
scores are 0, ``GeLU(0) = 0`` and zeros change neither the row norms nor the output (bit-exact, also
in float64).

New keys: Normal(0, ``key_std``), zero by default (the paper). ``key_std > 0`` changes the function
(the claim check's negative control). New values: Normal(0, ``value_std``); ``null`` uses the
standard deviation of the layer's existing values. Values are random rather than zero because a
zero-key token's output weight is ``GeLU(0) = 0``, so its value gets no gradient at first and its
key's gradient is proportional to its value: with zero keys AND zero values a new token never
trains. With random values the keys move at the first step and the values train from the second;
with zero keys the values do not affect the output, so any values keep the function exact. Draws use
a generator seeded with ``seed`` (layer by layer in module order), so a growth is reproducible.

Differences from the paper: the official code's incremental loading keeps the new tokens' random
initialisation and recomputes the scale from the new token count, so its grown model does not start
from exactly the old function; here growth is exact by default, as the paper describes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import BaseConfig, join, param
from ..errors import ConfigError
from ..layers.linear.pattention import Pattention, PattentionConfig
from ..registry import TRANSFORM
from .base import TransformConfig

PATH = "transform"


@dataclass(kw_only=True)
class TokenFormerGrowConfig(TransformConfig):
    kind = "tokenformer_grow"
    add_tokens: int = param(doc="parameter tokens m appended to every Pattention layer (>= 1)")
    key_std: float = param(0.0, doc="std of the new keys; 0: zero keys (exact, the paper)")
    value_std: float | None = param(
        None, doc="std of the new values; null: the std of the layer's existing values"
    )
    seed: int = param(0, doc="seed of the generator that draws new keys and values")

    def validate(self, path: str = "") -> None:
        if self.add_tokens < 1:
            raise ConfigError(
                f"{join(path, 'add_tokens')}: {self.add_tokens}; allowed: an int >= 1"
            )
        if not self.key_std >= 0.0:
            raise ConfigError(f"{join(path, 'key_std')}: {self.key_std}; allowed: >= 0")
        if self.value_std is not None and not self.value_std >= 0.0:
            raise ConfigError(f"{join(path, 'value_std')}: {self.value_std}; allowed: null or >= 0")


def grow_config(cfg: Any, add_tokens: int) -> Any:
    """``cfg`` with ``add_tokens`` appended to ``grown_tokens`` of every pattention config in it."""
    if isinstance(cfg, PattentionConfig):
        return cfg.replace(grown_tokens=[*cfg.grown_tokens, add_tokens])
    if isinstance(cfg, list):
        return [grow_config(item, add_tokens) for item in cfg]
    if not isinstance(cfg, BaseConfig):
        return cfg
    changes = {}
    for f in dataclasses.fields(cfg):
        old = getattr(cfg, f.name)
        new = grow_config(old, add_tokens)
        if new is not old:
            changes[f.name] = new
    return cfg.replace(**changes) if changes else cfg


def pattention_layers(model: nn.Module) -> dict[str, Pattention]:
    """The model's Pattention layers by module name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Pattention)}


@TRANSFORM.register(TokenFormerGrowConfig)
def TokenFormerGrow(cfg: TokenFormerGrowConfig, *, model: nn.Module) -> nn.Module:
    """A new model with ``cfg.add_tokens`` more tokens in every Pattention; ``model`` untouched."""
    from ..models import build_model

    old_layers = pattention_layers(model)
    if not old_layers:
        raise ConfigError(
            f"{join(PATH, 'kind')}: tokenformer_grow needs a model with Pattention layers "
            f"(model kind {model.config.kind!r} has none); allowed: a model whose linear kind "
            "(model.linear or a part's linear) is 'pattention'"
        )
    new = build_model(grow_config(model.config, cfg.add_tokens))
    ref = next(model.parameters())
    new.to(device=ref.device, dtype=ref.dtype)
    new_layers = pattention_layers(new)
    state = model.state_dict()
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    for name, layer in old_layers.items():
        grown = new_layers.get(name)
        if grown is None or grown.num_tokens != layer.num_tokens + cfg.add_tokens:
            raise ConfigError(
                f"{join(PATH, 'kind')}: Pattention {name!r} is not described by the model config "
                "(a rebuilt model does not grow it); allowed: models built from their config"
            )
        prefix = f"{name}." if name else ""
        keys, values = _new_tokens(cfg, layer, generator)
        state[f"{prefix}key_tokens"] = torch.cat([layer.key_tokens.detach(), keys])
        state[f"{prefix}value_tokens"] = torch.cat([layer.value_tokens.detach(), values])
    new.load_state_dict(state)
    return new.train(model.training)


TokenFormerGrow.paper = Pattention.paper


def _new_tokens(
    cfg: TokenFormerGrowConfig, layer: Pattention, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys (m, in), values (m, out)) appended to ``layer``, in its dtype and device."""
    ref = layer.value_tokens
    m = cfg.add_tokens
    value_std = cfg.value_std
    if value_std is None:
        value_std = float(ref.detach().std()) if ref.numel() > 1 else 0.0
    keys = torch.randn(m, layer.in_features, generator=generator, dtype=torch.float64)
    values = torch.randn(m, layer.out_features, generator=generator, dtype=torch.float64)
    keys = keys * cfg.key_std if cfg.key_std > 0 else torch.zeros_like(keys)  # no -0.0 entries
    keys = keys.to(device=ref.device, dtype=ref.dtype)
    values = (values * value_std).to(device=ref.device, dtype=ref.dtype)
    return keys, values
