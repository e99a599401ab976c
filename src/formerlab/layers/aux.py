"""Auxiliary losses, layer metrics and active-parameter counts that layers report to training loops.

A layer that has an extra training objective (a mixture-of-experts load-balancing loss, say) or
numbers worth logging calls :func:`record_aux` in its ``forward``. A training loop calls
:func:`collect_aux` right after the model's forward: it takes every record out of the model (so a
record is never counted twice), sums the losses and averages the metrics over the layers that
reported them. Adding the returned loss to the task loss is all a loop has to do::

    loss, _ = task.loss(model, batch)
    aux, metrics = collect_aux(model)
    (loss if aux is None else loss + aux).backward()

Metrics are floats or lists of floats (e.g. the load of each expert); a metric reported by several
layers is averaged over them (lists element by element). A layer that leaves some of its
parameters unused for a given token (experts it did not route the token to) says how many by
defining ``inactive_params() -> int``; :func:`parameter_counts` uses it to report the parameters a
token actually goes through beside the total.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_RECORD = "_formerlab_aux"


def record_aux(
    module: nn.Module, loss: torch.Tensor | None, metrics: dict[str, Any] | None = None
) -> None:
    """Store ``module``'s auxiliary ``loss`` (a scalar, already weighted) and ``metrics`` of the
    forward pass that just ran, replacing what an earlier forward left there."""
    module.__dict__[_RECORD] = (loss, dict(metrics or {}))


def _as_number(value: Any) -> float | list[float]:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return float(value) if value.dim() == 0 else [float(v) for v in value.flatten()]
    if isinstance(value, list | tuple):
        return [float(v) for v in value]
    return float(value)


def _average(values: list[Any]) -> float | list[float] | None:
    if all(isinstance(v, float) for v in values):
        return sum(values) / len(values)
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        return [sum(column) / len(values) for column in zip(*values, strict=True)]
    return None  # mixed kinds or lengths: no meaningful average


def take_records(model: nn.Module) -> list[tuple[str, torch.Tensor | None, dict[str, Any]]]:
    """Take the records out of ``model``, one per reporting layer: (module name, loss, metrics as
    floats or lists of floats), in module order."""
    records = []
    for name, module in model.named_modules():
        record = module.__dict__.pop(_RECORD, None)
        if record is not None:
            loss, metrics = record
            records.append((name, loss, {k: _as_number(v) for k, v in metrics.items()}))
    return records


def collect_aux(model: nn.Module) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Take the records out of ``model``: (sum of the auxiliary losses or None, averaged metrics).

    The metrics include ``aux_loss`` (the returned sum as a float) whenever a loss was recorded.
    """
    losses: list[torch.Tensor] = []
    gathered: dict[str, list[Any]] = {}
    for _, loss, metrics in take_records(model):
        if loss is not None:
            losses.append(loss)
        for name, value in metrics.items():
            gathered.setdefault(name, []).append(value)
    total = torch.stack(losses).sum() if losses else None
    summary = {k: v for k, v in ((k, _average(vs)) for k, vs in gathered.items()) if v is not None}
    if total is not None:
        summary["aux_loss"] = float(total.detach())
    return total, summary


def clear_aux(model: nn.Module) -> None:
    """Drop every record left in ``model`` (e.g. by an evaluation forward)."""
    for module in model.modules():
        module.__dict__.pop(_RECORD, None)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``total``: distinct parameters (a tied weight counts once); ``active``: those one token goes
    through (the total minus what layers report through ``inactive_params()``)."""
    total = sum(p.numel() for p in model.parameters())
    inactive = sum(
        int(m.inactive_params())
        for m in model.modules()
        if callable(getattr(m, "inactive_params", None))
    )
    return {"total": total, "active": total - inactive}
