"""Simulated 8-bit quantization and activation-outlier metrics, for measuring how quantizable a model is.

Used by the ``quantizable`` claim check ("Quantizable Transformers: Removing Outliers by Helping
Attention Heads Do Nothing", Bondarenko, Nagel, Blankevoort, 2023, arXiv:2306.12929); the functions
take any ``nn.Module`` and change nothing permanently.

- :func:`fake_quant`: per-tensor asymmetric uniform quantization to ``bits`` bits and back
  ("quantize-dequantize") over a range ``[lo, hi]`` that is first widened to contain 0, so that 0 is
  represented exactly: ``scale = (hi - lo) / (2**bits - 1)``, ``zero_point = round(-lo / scale)``,
  ``q = clamp(round(x / scale) + zero_point, 0, 2**bits - 1)``, result ``(q - zero_point) * scale``.
  Rounding is half-to-even (``torch.round``, like ``numpy.round``).
- :func:`kurtosis`: ``E[(x - mu)^4] / sigma^4`` of each row, population moments (3 for a Gaussian).
- :func:`outlier_stats`: the kurtosis and the infinity norm ``max |x|`` of watched activations, each
  computed per example (a whole ``(T, D)`` activation flattened, as the paper's code does) and averaged
  over the examples; ``avg_kurtosis`` is the mean over the watched activations and ``max_inf_norm``
  the largest of them.
- :func:`simulated_w8a8`: a context in which every ``nn.Linear`` has fake-quantized weights (range:
  the weight's min and max) and fake-quantized inputs and outputs, and every transformer block
  fake-quantizes its output (the residual stream), with static activation ranges: the min and max
  seen on calibration batches run with the quantized weights.

Differences from the paper: ranges are plain min-max (the paper uses MSE-optimal weight ranges and
running min-max or percentile activation ranges); the token embedding, the (tied) output head, the
norms and the softmax stay in floating point; only linear layers and block outputs are quantized.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from .errors import InputError

__all__ = [
    "block_outputs",
    "fake_quant",
    "ffn_outputs",
    "kurtosis",
    "outlier_stats",
    "quant_params",
    "simulated_w8a8",
]


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise InputError(f"bits: invalid value {bits!r}; allowed: an int from 2 to 16")


def quant_params(lo: float, hi: float, bits: int = 8) -> tuple[float, int]:
    """(scale, zero_point) of asymmetric ``bits``-bit quantization over ``[lo, hi]`` widened to 0."""
    _check_bits(bits)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise InputError(f"range: invalid value [{lo!r}, {hi!r}]; allowed: finite lo <= hi")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    if scale == 0.0:  # an all-zero range: any positive scale represents it exactly
        return 1.0, 0
    zero_point = min(max(round(-lo / scale), 0), levels)
    return scale, zero_point


def fake_quant(x: torch.Tensor, lo: float, hi: float, bits: int = 8) -> torch.Tensor:
    """``x`` quantized to ``bits`` bits over ``[lo, hi]`` (asymmetric, per tensor) and dequantized."""
    scale, zero_point = quant_params(float(lo), float(hi), bits)
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 2**bits - 1)
    return (q - zero_point) * scale


def kurtosis(x: torch.Tensor) -> torch.Tensor:
    """Kurtosis ``E[(x - mu)^4] / sigma^4`` of each row of a 2-D tensor (population moments)."""
    if x.dim() != 2 or x.size(1) < 2:
        raise InputError(f"x: expected a (rows, n >= 2) tensor, got shape {tuple(x.shape)}")
    centred = x - x.mean(dim=1, keepdim=True)
    var = centred.square().mean(dim=1)
    return centred.pow(4).mean(dim=1) / var.square()


# -- which activations -------------------------------------------------------------------------


def _blocks(model: nn.Module) -> list[nn.Module]:
    from .layers.block import TransformerBlock

    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        raise InputError(f"model: {type(model).__name__} has no transformer blocks to watch")
    return blocks


def ffn_outputs(model: nn.Module) -> dict[str, nn.Module]:
    """``"block{i}.ffn"`` -> each block's FFN (its output, before the residual add)."""
    return {f"block{i}.ffn": block.ffn for i, block in enumerate(_blocks(model))}


def block_outputs(model: nn.Module) -> dict[str, nn.Module]:
    """``"block{i}"`` -> each transformer block (its output is the residual stream)."""
    return {f"block{i}": block for i, block in enumerate(_blocks(model))}


# -- outlier metrics ---------------------------------------------------------------------------


@torch.no_grad()
def outlier_stats(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], watch: dict[str, nn.Module]
) -> dict[str, Any]:
    """Kurtosis and inf norm of the outputs of the ``watch`` modules on ``batches`` (eval mode).

    Returns ``{"kurtosis": {name: mean}, "inf_norm": {name: mean}, "avg_kurtosis", "max_inf_norm"}``
    where each per-name figure is the mean over examples of that example's flattened activation.
    """
    if not watch:
        raise InputError("watch: no modules to watch; allowed: a non-empty {name: module} dict")
    sums = {name: [0.0, 0.0, 0] for name in watch}  # kurtosis sum, inf-norm sum, examples

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            flat = out.detach().double().reshape(out.size(0), -1)
            entry = sums[name]
            entry[0] += float(kurtosis(flat).sum())
            entry[1] += float(flat.abs().amax(dim=1).sum())
            entry[2] += flat.size(0)

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in watch.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if any(count == 0 for _, _, count in sums.values()):
        raise InputError("batches: no example reached the watched modules")
    kurt = {n: k / c for n, (k, _, c) in sums.items()}
    inf = {n: v / c for n, (_, v, c) in sums.items()}
    return {
        "kurtosis": kurt,
        "inf_norm": inf,
        "avg_kurtosis": sum(kurt.values()) / len(kurt),
        "max_inf_norm": max(inf.values()),
    }


# -- simulated W8A8 ----------------------------------------------------------------------------


class _Range:
    """Running min and max of everything observed."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach())
        self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))


class _ActQuant:
    """Observes (``calibrating``) or fake-quantizes (afterwards) one activation tensor."""

    def __init__(self, bits: int) -> None:
        self.bits, self.range, self.calibrating = bits, _Range(), True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.range.observe(x)
            return x
        if not math.isfinite(self.range.lo):  # never seen during calibration: leave it as is
            return x
        return fake_quant(x, self.range.lo, self.range.hi, self.bits)


def _quantize_weights(model: nn.Module, bits: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    saved = []
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                w = module.weight
                saved.append((w, w.detach().clone()))
                lo, hi = torch.aminmax(w.detach())
                w.copy_(fake_quant(w, float(lo), float(hi), bits))
    return saved


def _hook_activations(model: nn.Module, bits: int) -> tuple[list[_ActQuant], list[Any]]:
    quants: list[_ActQuant] = []
    handles: list[Any] = []

    def new() -> _ActQuant:
        quants.append(_ActQuant(bits))
        return quants[-1]

    for module in model.modules():
        if isinstance(module, nn.Linear):
            q_in, q_out = new(), new()
            handles.append(
                module.register_forward_pre_hook(lambda m, args, q=q_in: (q(args[0]), *args[1:]))
            )
            handles.append(module.register_forward_hook(lambda m, args, out, q=q_out: q(out)))
    for block in _blocks(model):
        q = new()
        handles.append(block.register_forward_hook(lambda m, args, out, q=q: q(out)))
    return quants, handles


@contextlib.contextmanager
def simulated_w8a8(
    model: nn.Module, calibration: Iterable[dict[str, torch.Tensor]], bits: int = 8
) -> Iterator[nn.Module]:
    """Within the context ``model`` computes with simulated ``bits``-bit weights and activations
    (module docstring); activation ranges come from the ``calibration`` batches. The weights and
    the hooks are restored on exit, even after an error."""
    _check_bits(bits)
    was_training = model.training
    model.eval()
    saved = _quantize_weights(model, bits)
    quants, handles = _hook_activations(model, bits)
    try:
        with torch.no_grad():
            seen = 0
            for batch in calibration:
                model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
                seen += 1
        if seen == 0:
            raise InputError("calibration: no batches; allowed: one or more batches")
        for q in quants:
            q.calibrating = False
        yield model
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for w, original in saved:
                w.copy_(original)
        model.train(was_training)
