"""MatFormer nested feed-forward: the first ``m`` hidden units of one FFN form each smaller FFN.

Paper: Devvrit, Sneha Kudugunta, Aditya Kusupati, Tim Dettmers, Kaifeng Chen, Inderjit Dhillon,
Yulia Tsvetkov, Hannaneh Hajishirzi, Sham Kakade, Ali Farhadi, Prateek Jain, 2023, "MatFormer:
Nested Transformer for Elastic Inference", arXiv:2310.07707.

An ``inner`` FFN (``mlp`` or ``glu``) of hidden width ``h`` is trained so that, for every fraction
``g`` in ``granularities``, its first ``m = round(g * h)`` hidden units work on their own:
``FFN_g(x) = fc2.weight[:, :m] @ act(fc1.weight[:m] @ x + fc1.bias[:m]) + fc2.bias`` (for ``glu``
the ``gate`` and ``up`` rows are sliced alike). Parameters keep the inner kind's names (``fc1``,
``fc2`` or ``gate``, ``up``, ``fc2``), so a plain ``mlp``/``glu`` model's state dict loads into the
nested model and back. :mod:`formerlab.transforms.matformer_extract` cuts standalone submodels,
one fraction per layer (Mix'n'Match) if wanted.

Which width runs: :func:`matformer_granularity` sets it for a whole model (one fraction, or one per
layer); without it every layer runs at full width, in training and at evaluation. During training
the trainer asks :meth:`MatFormerFFN.training_passes` how to use each micro-batch:

- ``mode: sum`` (the paper's joint training): one forward/backward per granularity, all layers at
  the same fraction; the step minimises the sum of the losses (the logged loss is that sum).
- ``mode: sample``: one granularity per step, shared by all layers, drawn uniformly from a
  ``random.Random`` seeded with ``(train.seed, step)`` only — so an exact resume sees the same
  sequence.

Differences from the paper: granularities are fractions of the hidden width (the paper's factors
h, h/2, h/4, h/8 are the default ``[0.125, 0.25, 0.5, 1.0]``); the loss weights of joint training are
all 1; only the FFN is nested (the paper's FFN-only setting, not the attention heads); slicing needs
a dense linear kind.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ...config import join, param
from ...errors import ConfigError
from ...registry import FFN
from ..linear import LinearConfig
from .base import FFNConfig
from .mlp import MLPConfig

#: inner kinds that can be nested
NESTABLE = ("mlp", "glu")
#: projections whose output rows are hidden units (sliced ``[:m]``); ``fc2`` is sliced ``[:, :m]``
IN_PROJECTIONS = ("fc1", "gate", "up")


def _default_granularities() -> list[float]:
    return [0.125, 0.25, 0.5, 1.0]


@dataclass(kw_only=True)
class MatFormerConfig(FFNConfig):
    kind = "matformer"
    granularities: list[float] = param(
        factory=_default_granularities,
        doc="nested widths as fractions of the hidden units, increasing, ending at 1.0",
    )
    inner: FFNConfig = param(factory=MLPConfig, doc="the FFN that is nested: {kind: mlp | glu}")
    mode: Literal["sum", "sample"] = param(
        "sum", doc="training: sum (every granularity each step) | sample (one per step)"
    )

    def validate(self, path: str = "") -> None:
        where = join(path, "granularities")
        if not self.granularities:
            raise ConfigError(f"{where}: empty; allowed: increasing fractions ending at 1.0")
        for i, g in enumerate(self.granularities):
            if not 0.0 < g <= 1.0:
                raise ConfigError(f"{join(where, i)}: {g}; allowed: 0 < fraction <= 1")
            if i and g <= self.granularities[i - 1]:
                raise ConfigError(
                    f"{join(where, i)}: {g} is not above {self.granularities[i - 1]}; "
                    "allowed: strictly increasing fractions"
                )
        if self.granularities[-1] != 1.0:
            raise ConfigError(
                f"{join(where, len(self.granularities) - 1)}: {self.granularities[-1]}; "
                "allowed: the last granularity is 1.0 (the full FFN)"
            )
        if self.inner.kind not in NESTABLE:
            raise ConfigError(
                f"{join(path, 'inner.kind')}: {self.inner.kind!r} cannot be nested; "
                f"allowed: {', '.join(NESTABLE)}"
            )


def _rows(proj: nn.Linear, x: torch.Tensor, m: int) -> torch.Tensor:
    """The first ``m`` output units of ``proj(x)``."""
    bias = None if proj.bias is None else proj.bias[:m]
    return nn.functional.linear(x, proj.weight[:m], bias)


@FFN.register(MatFormerConfig)
class MatFormerFFN(nn.Module):
    """An ``mlp`` or ``glu`` FFN whose leading hidden units also run as smaller FFNs."""

    paper = (
        "Devvrit, Kudugunta, Kusupati et al., 2023, MatFormer: Nested Transformer for Elastic "
        "Inference, arXiv:2310.07707"
    )

    def __init__(self, cfg: MatFormerConfig, *, dim: int, linear: LinearConfig):
        super().__init__()
        self.config = cfg
        inner = FFN.build(cfg.inner, dim=dim, linear=linear)
        for name, child in inner.named_children():  # same parameter names as the plain FFN
            if not isinstance(child, nn.Linear):
                raise ConfigError(
                    f"linear.kind: {linear.kind!r} builds {type(child).__name__}; the matformer "
                    "FFN slices weight rows and needs a dense linear kind; allowed: dense"
                )
            self.add_module(name, child)
        self.gated = cfg.inner.kind == "glu"
        self.stream_ports = (("gate", "up") if self.gated else ("fc1",), ("fc2",))
        self.act, self.dropout = inner.act, inner.dropout
        self.hidden = self.fc2.in_features
        self.widths = [max(1, round(g * self.hidden)) for g in cfg.granularities]
        if len(set(self.widths)) != len(self.widths):
            raise ConfigError(
                f"ffn.granularities: {cfg.granularities} of {self.hidden} hidden units give the "
                f"widths {self.widths}; allowed: fractions that give distinct widths"
            )
        self.granularity: float | None = None  # None: full width (set by matformer_granularity)

    def width(self, granularity: float | None) -> int:
        """Hidden units used at ``granularity`` (None: all of them)."""
        if granularity is None:
            return self.hidden
        return self.widths[self.config.granularities.index(granularity)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.width(self.granularity)
        if self.gated:
            h = self.act(_rows(self.gate, x, m)) * _rows(self.up, x, m)  # (..., m)
        else:
            h = self.act(_rows(self.fc1, x, m))  # (..., m)
        if self.dropout:
            h = nn.functional.dropout(h, self.dropout, self.training)
        return nn.functional.linear(h, self.fc2.weight[:, :m], self.fc2.bias)

    def sliced_state_dict(self, granularity: float) -> dict[str, torch.Tensor]:
        """This layer's parameters cut to ``granularity``: the state dict of the plain inner FFN
        of that width (fresh tensors, detached)."""
        m = self.width(granularity)
        state = {}
        for name, tensor in self.state_dict().items():
            if name.split(".")[0] in IN_PROJECTIONS:
                tensor = tensor[:m]
            elif name == "fc2.weight":
                tensor = tensor[:, :m]
            state[name] = tensor.detach().clone()
        return state

    @staticmethod
    def training_passes(
        model: nn.Module, step: int, seed: int
    ) -> list[tuple[float, AbstractContextManager]]:
        """The trainer's hook: (loss weight, context) for each forward/backward of a micro-batch."""
        cfg = shared_config(model)
        if cfg.mode == "sum":
            return [(1.0, matformer_granularity(model, g)) for g in cfg.granularities]
        return [(1.0, matformer_granularity(model, sample_granularity(cfg, step, seed)))]


def nested_ffns(model: nn.Module) -> list[MatFormerFFN]:
    """The model's matformer FFNs in module order (block 0 first)."""
    return [m for m in model.modules() if isinstance(m, MatFormerFFN)]


def shared_config(model: nn.Module) -> MatFormerConfig:
    """The granularities and mode every matformer layer of ``model`` shares (ConfigError if none
    or if layers disagree: training picks one granularity for all layers)."""
    layers = nested_ffns(model)
    if not layers:
        raise ConfigError("model.ffn.kind: the model has no matformer FFN; allowed: matformer")
    first = layers[0].config
    for i, layer in enumerate(layers[1:], start=1):
        cfg = layer.config
        if (cfg.granularities, cfg.mode) != (first.granularities, first.mode):
            raise ConfigError(
                f"model.layer_ffns[{i}]: granularities {cfg.granularities} / mode {cfg.mode!r} "
                f"differ from layer 0's {first.granularities} / {first.mode!r}; allowed: the same "
                "granularities and mode in every matformer layer"
            )
    return first


def sample_granularity(cfg: MatFormerConfig, step: int, seed: int) -> float:
    """``mode: sample``'s granularity of optimizer step ``step``: a pure function of (seed, step)."""
    return random.Random(seed * 1_000_003 + step).choice(cfg.granularities)


@contextmanager
def matformer_granularity(
    model: nn.Module, granularity: float | Sequence[float | None] | None
) -> Iterator[nn.Module]:
    """Run ``model``'s matformer FFNs at ``granularity`` inside the block: one fraction for every
    layer, a list with one per layer (Mix'n'Match), or None (full width). Restored on exit."""
    layers = nested_ffns(model)
    if not layers:
        raise ConfigError("model.ffn.kind: the model has no matformer FFN; allowed: matformer")
    if granularity is None or isinstance(granularity, int | float):
        values = [granularity] * len(layers)
    else:
        values = list(granularity)
        if len(values) != len(layers):
            raise ConfigError(
                f"granularity: {len(values)} values for {len(layers)} matformer layers; "
                f"allowed: one fraction or a list of exactly {len(layers)}"
            )
    for i, (layer, g) in enumerate(zip(layers, values, strict=True)):
        if g is not None and (isinstance(g, bool) or g not in layer.config.granularities):
            allowed = ", ".join(f"{v:g}" for v in layer.config.granularities)
            raise ConfigError(
                f"granularity[{i}]: {g!r} is not a granularity of layer {i}; allowed: {allowed}"
            )
    saved = [layer.granularity for layer in layers]
    for layer, g in zip(layers, values, strict=True):
        layer.granularity = g
    try:
        yield model
    finally:
        for layer, g in zip(layers, saved, strict=True):
            layer.granularity = g
