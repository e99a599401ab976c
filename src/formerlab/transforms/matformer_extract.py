"""Cut a standalone smaller model out of a MatFormer model (``ffn: {kind: matformer}``).

Paper: Devvrit, Kudugunta, Kusupati et al., 2023, "MatFormer: Nested Transformer for Elastic
Inference", arXiv:2310.07707 (§3.3 Mix'n'Match: one granularity per layer).

``{"kind": "matformer_extract", "fraction": 0.25}`` keeps the first quarter of every layer's hidden
units; ``"fractions": [0.25, 0.5, ...]`` picks one fraction per layer, block 0 first (Mix'n'Match).
The result is a plain model — each block's FFN is the nested model's ``inner`` kind (``mlp`` or
``glu``) at the cut width, holding the sliced weights (fc1/gate/up rows ``[:m]``, fc2 columns
``[:, :m]``) — whose outputs equal the nested model's at that granularity
(:func:`~formerlab.layers.ffn.matformer.matformer_granularity`). One fraction for every layer is
written as ``ffn``; per-layer fractions as the model's ``layer_ffns`` (one FFN config per block).
``fraction: 1.0`` (the default) turns the nested model into the plain model it contains.

Fractions must be granularities the model was trained with (the paper's submodels); other widths
exist inside the weights but were never trained to stand alone, so they are refused with the list
of allowed values.

Differences from the paper: the paper picks Mix'n'Match configurations by hand (slowly growing
widths); here the caller gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import join, param
from ..errors import ConfigError
from ..layers.ffn.matformer import MatFormerConfig, MatFormerFFN, nested_ffns
from ..registry import TRANSFORM
from .base import TransformConfig

PATH = "transform"


@dataclass(kw_only=True)
class MatFormerExtractConfig(TransformConfig):
    kind = "matformer_extract"
    fraction: float = param(1.0, doc="width kept in every layer (a trained granularity)")
    fractions: list[float] | None = param(
        None, doc="one width per layer, block 0 first (Mix'n'Match); replaces fraction"
    )

    def validate(self, path: str = "") -> None:
        _check_fraction(self.fraction, join(path, "fraction"))
        if self.fractions is None:
            return
        if self.fraction != 1.0:
            raise ConfigError(
                f"{join(path, 'fraction')}: {self.fraction} given with fractions; "
                "allowed: one of fraction or fractions"
            )
        if not self.fractions:
            raise ConfigError(f"{join(path, 'fractions')}: empty; allowed: one fraction per layer")
        for i, f in enumerate(self.fractions):
            _check_fraction(f, join(join(path, "fractions"), i))


def _check_fraction(value: float, where: str) -> None:
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{where}: {value}; allowed: 0 < fraction <= 1")


def _layer_fractions(cfg: MatFormerExtractConfig, layers: list[MatFormerFFN]) -> list[float]:
    """One trained granularity per matformer layer; ConfigError naming the field otherwise."""
    if cfg.fractions is None:
        values, where = [cfg.fraction] * len(layers), [join(PATH, "fraction")] * len(layers)
    else:
        if len(cfg.fractions) != len(layers):
            raise ConfigError(
                f"{join(PATH, 'fractions')}: {len(cfg.fractions)} values for a model with "
                f"{len(layers)} matformer layers; allowed: exactly {len(layers)}"
            )
        values = list(cfg.fractions)
        where = [join(join(PATH, "fractions"), i) for i in range(len(layers))]
    for i, (layer, value) in enumerate(zip(layers, values, strict=True)):
        if value not in layer.config.granularities:
            allowed = ", ".join(f"{g:g}" for g in layer.config.granularities)
            raise ConfigError(
                f"{where[i]}: {value:g} is not a trained granularity of layer {i}; "
                f"allowed: {allowed}"
            )
    return values


def plain_ffn_config(nested: MatFormerConfig, dim: int, width: int) -> Any:
    """The ``inner`` FFN config of ``nested`` that builds exactly ``width`` hidden units."""
    inner = nested.inner
    if inner.kind == "glu":  # hidden = round(2 * mult * dim / 3), rounded up to multiple_of
        same = inner.hidden(dim) == width
        return inner if same else inner.replace(mult=1.5 * width / dim, multiple_of=1)
    same = round(inner.mult * dim) == width  # mlp: hidden = round(mult * dim)
    return inner if same else inner.replace(mult=width / dim)


@TRANSFORM.register(MatFormerExtractConfig)
def MatFormerExtract(cfg: MatFormerExtractConfig, *, model: nn.Module) -> nn.Module:
    """A new plain model with each layer cut to its fraction; ``model`` is left untouched."""
    from ..models import build_model

    layers = nested_ffns(model)
    depth = getattr(model.config, "depth", None)
    if not layers or len(layers) != depth:
        raise ConfigError(
            f"{join(PATH, 'kind')}: matformer_extract needs a decoder_lm or encoder whose every "
            f"block has a matformer FFN (model kind {model.config.kind!r} has {len(layers)} "
            f"matformer FFNs for depth {depth})"
        )
    fractions = _layer_fractions(cfg, layers)
    dim = model.config.dim
    ffns = [
        plain_ffn_config(layer.config, dim, layer.width(f))
        for layer, f in zip(layers, fractions, strict=True)
    ]
    if all(f == ffns[0] for f in ffns):
        new_cfg = model.config.replace(ffn=ffns[0], layer_ffns=None)
    else:
        new_cfg = model.config.replace(ffn=ffns[0], layer_ffns=ffns)  # ffn: unused, not nested
    new = build_model(new_cfg)
    ref = next(model.parameters())
    new.to(device=ref.device, dtype=ref.dtype)  # before loading: no precision lost in float64
    new.load_state_dict(_sliced_state(model, fractions))
    return new.train(model.training)


def _sliced_state(model: nn.Module, fractions: list[float]) -> dict[str, Any]:
    """``model``'s state dict with every matformer FFN's tensors cut to its layer's fraction."""
    state = model.state_dict()
    names = [name for name, m in model.named_modules() if isinstance(m, MatFormerFFN)]
    for name, fraction in zip(names, fractions, strict=True):
        layer = model.get_submodule(name)
        for key, tensor in layer.sliced_state_dict(fraction).items():
            state[f"{name}.{key}"] = tensor
    return state
