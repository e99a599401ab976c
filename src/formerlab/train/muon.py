"""Optimizer ``muon``: orthogonalized momentum for hidden weight matrices, AdamW for the rest.

Muon: Jordan, Jin, Boza, You, Cesista, Newhouse, Bernstein, 2024, "Muon: An optimizer for hidden
layers in neural networks" (blog post, kellerjordan.github.io/posts/muon); used for
Lipschitz-constrained training by Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, 2025,
"Training Transformers with Enforced Lipschitz Constants", arXiv:2507.13338, and scaled up in Liu
et al., 2025, "Muon is Scalable for LLM Training", arXiv:2502.16982 (the ``match_rms_adamw``
learning-rate adjustment).

Each step, a matrix's momentum is replaced by an approximation of ``U V^T`` from its SVD ``U S V^T``
(five quintic Newton–Schulz iterations, in bfloat16), so every update has spectral norm close to the
learning rate whatever the gradient's scale. The update rule is ``torch.optim.Muon``'s.

Parameter groups. Muon is defined for 2-D hidden matrices only. A trainable parameter goes to Muon
when it is 2-D and its name (``model.named_parameters()``, tied weights once) matches none of the
``exclude`` glob patterns (``fnmatch``; the defaults catch token/position embeddings, ``lm_head``
and classifier heads); everything else (embeddings, heads, biases, norm gains, tensors of other
rank) goes to the nested ``adamw`` optimizer, which keeps its own rules: decay on ``>= 2``-D
parameters only. Each part keeps its own peak learning rate; a schedule scales every group by the
same factor.

:class:`CombinedOptimizer` exposes the two torch optimizers as one: ``param_groups`` is the list of
both optimizers' group dicts (the same objects, so the trainer's per-group learning rates and
``base_lr`` reach them), and ``state_dict`` / ``load_state_dict`` / ``step`` / ``zero_grad`` act on
both, which is what schedules, gradient clipping and exact resume need.

Differences from the paper: the update is torch's Muon (Keller Jordan's coefficients
(3.4445, -4.775, 2.0315), whose singular values land roughly in [0.7, 1.2] rather than exactly 1,
and ``original`` scales the step by ``sqrt(max(1, out/in))``), not the paper's modula ``dualize``
with its own coefficients and ``sqrt(out/in)`` scale. Attention's fused ``qkv_proj`` of a ``dense``
model is one matrix to Muon (a non-fusable linear kind such as ``lipschitz`` keeps q, k, v
separate).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..config import join, param
from ..errors import CheckpointError, ConfigError
from ..registry import OPTIMIZER
from .config import OptimizerConfig
from .optim import AdamWConfig, _fast_path, param_groups

#: parameter names never given to Muon by default: embeddings (token, position), LM and task heads
DEFAULT_EXCLUDE = ("*embed*", "lm_head.*", "head.*", "*.head.*")


@dataclass(kw_only=True)
class MuonConfig(OptimizerConfig):
    kind: ClassVar[str] = "muon"
    lr: float = param(0.02, doc="Muon's peak learning rate (hidden matrices)")
    momentum: float = param(0.95, doc="momentum factor")
    nesterov: bool = param(True, doc="Nesterov momentum")
    ns_steps: int = param(5, doc="Newton-Schulz iterations per update")
    weight_decay: float = param(0.0, doc="decoupled weight decay of the Muon matrices")
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = param(
        "original",
        doc="learning-rate scale per matrix shape: original = sqrt(max(1, out/in)) (Jordan); "
        "match_rms_adamw = 0.2 * sqrt(max(out, in)) (Liu et al. 2025)",
    )
    exclude: list[str] = param(
        factory=lambda: list(DEFAULT_EXCLUDE),
        doc="glob patterns of parameter names that go to AdamW even when 2-D",
    )
    adamw: AdamWConfig = param(
        factory=AdamWConfig, doc="optimizer of everything Muon does not take (kind adamw)"
    )

    def validate(self, path: str = "") -> None:
        checks = [
            ("lr", self.lr > 0, "> 0"),
            ("momentum", 0.0 <= self.momentum < 1.0, "0 <= momentum < 1"),
            ("ns_steps", 1 <= self.ns_steps < 100, "1..99"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("exclude", all(p.strip() for p in self.exclude), "non-empty glob patterns"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                value = getattr(self, name)
                raise ConfigError(
                    f"{join(path, name)}: invalid value {value!r}; allowed: {allowed}"
                )


def muon_split(
    model: nn.Module, exclude: list[str] | tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters Muon updates, and of those AdamW updates."""
    muon, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            hidden = p.ndim == 2 and not any(fnmatchcase(name, pat) for pat in exclude)
            (muon if hidden else rest).append(name)
    return muon, rest


class CombinedOptimizer:
    """Several torch optimizers over disjoint parameters, driven as one (see the module doc)."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]) -> None:
        self.parts = parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.parts.values() for group in opt.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.parts):
            raise CheckpointError(
                f"optimizer state has parts {sorted(state)}; "
                f"this optimizer has {sorted(self.parts)}"
            )
        for name, opt in self.parts.items():
            opt.load_state_dict(state[name])

    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for opt in self.parts.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)


def _adamw_part(
    cfg: AdamWConfig, model: nn.Module, taken: set[int]
) -> torch.optim.Optimizer | None:
    """AdamW (its own decay rules, :func:`formerlab.train.optim.param_groups`) over the trainable
    parameters whose ids are not in ``taken``."""
    groups = []
    for group in param_groups(model, cfg.weight_decay):
        kept = [p for p in group["params"] if id(p) not in taken]
        if kept:
            groups.append({**group, "params": kept})
    if not groups:
        return None
    params = [p for g in groups for p in g["params"]]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **_fast_path(params)
    )


@OPTIMIZER.register(MuonConfig)
def muon(cfg: MuonConfig, *, model: nn.Module) -> CombinedOptimizer:
    """Muon on the hidden matrices, AdamW (``cfg.adamw``) on everything else."""
    named = dict(model.named_parameters())
    hidden, _ = muon_split(model, cfg.exclude)
    parts: dict[str, torch.optim.Optimizer] = {}
    if hidden:
        parts["muon"] = torch.optim.Muon(
            [named[n] for n in hidden],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            ns_steps=cfg.ns_steps,
            adjust_lr_fn=cfg.adjust_lr_fn,
        )
    rest = _adamw_part(cfg.adamw, model, {id(named[n]) for n in hidden})
    if rest is not None:
        parts["adamw"] = rest
    if not parts:
        raise ConfigError("model: has no trainable parameters; allowed: a model with parameters")
    return CombinedOptimizer(parts)


muon.paper = (  # type: ignore[attr-defined]
    "Jordan et al., 2024, Muon: An optimizer for hidden layers in neural networks (blog post); "
    "Newhouse et al., 2025, Training Transformers with Enforced Lipschitz Constants, "
    "arXiv:2507.13338"
)
