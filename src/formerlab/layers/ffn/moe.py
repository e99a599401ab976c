"""Mixture-of-experts feed-forward with top-k routing, expert capacity and auxiliary losses.

The MoE layer of "Training Foundation Models on a Full-Stack AMD Platform" (ZAYA1), Anthony et al.
(Zyphra, AMD, IBM), 2025, arXiv:2511.17127: a top-1 routed MoE whose 760M active of 8.3B total
parameters is the paper's model. The mechanism is the one of Shazeer et al., 2017, "Outrageously
Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer", arXiv:1701.06538; with the
capacity and load-balancing loss of GShard (Lepikhin et al., 2020, arXiv:2006.16668) and Switch
Transformers (Fedus, Zoph, Shazeer, 2021, arXiv:2101.03961), and the router z-loss of ST-MoE (Zoph
et al., 2022, arXiv:2202.08906).

Per token x: router logits ``l = W_r x`` (n experts), ``p = softmax(l)``; the ``top_k`` experts with
the largest p are chosen. Combine weights: with ``top_k = 1`` the raw probability ``p_e`` (Switch:
the router then gets gradient from the task loss; renormalising would make the weight always 1);
with ``top_k = 2`` the two probabilities renormalised to sum to 1 (GShard, Mixtral). The output is
``sum_e gate_e * expert_e(x)`` over the chosen experts that kept the token.

Capacity: with ``capacity_factor`` c, each expert takes at most ``ceil(c * tokens * top_k / n)``
assignments per forward, first come first served (a token's choices in rank order); later
assignments are dropped and contribute 0 (the residual carries the token). For a (batch, T, dim)
input the order is position-major (all sequences' position 0, then position 1, ...), so no token
ever loses its slot to a later position and a causal model stays causal; outputs do depend on the
other sequences of the batch and on how many tokens go through at once (a cached decode step differs
from a full forward when tokens are dropped), as in Switch. ``capacity_factor: null`` drops nothing
and keeps every token's output independent of the rest. Padding tokens are routed like any other
token (the FFN gets no mask): they count towards the load, the balancing loss and the capacity.

Auxiliary losses (recorded with :func:`formerlab.layers.aux.record_aux`; the trainer adds them):
load balancing ``n * sum_e f_e * P_e`` where ``f_e`` is the share of all top-k assignments (before
capacity) that go to e and ``P_e`` the mean router probability of e (1 when balanced), weighted by
``aux_loss_weight``; the z-loss ``mean(logsumexp(l)^2)`` weighted by ``z_loss_weight``. Metrics:
``moe_load`` (f per expert), ``moe_load_cv`` (std / mean of f), ``moe_dropped_frac`` (dropped
assignments / all), ``moe_balance_loss`` and ``moe_z_loss`` (unweighted).

The sparse path sorts the assignments by expert, runs each expert once on its tokens and scatters the
weighted results back; :meth:`MoE.dense_reference` runs every expert on every token and masks, and the
two are equal (tested in float64, with and without drops, k = 1 and 2).

Differences from the paper: ZAYA1's router (a down-projection of the residual stream, exponential
depth averaging across layers, a small MLP instead of a linear map, and a control-theoretic
balancing scheme) is replaced by the linear router and balancing loss of Switch/GShard; no expert
parallelism (the experts run one after another on one device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ...config import join, param
from ...errors import ConfigError
from ...registry import FFN
from ..aux import record_aux
from ..linear import DenseConfig, LinearConfig, make_linear
from .base import FFNConfig
from .mlp import MLPConfig


@dataclass(kw_only=True)
class MoEConfig(FFNConfig):
    kind = "moe"
    num_experts: int = param(8, doc="number of experts n")
    top_k: int = param(1, doc="experts per token: 1 (Switch, ZAYA1) or 2 (GShard, Mixtral)")
    expert: FFNConfig = param(factory=MLPConfig, doc="feed-forward kind of every expert")
    capacity_factor: float | None = param(
        None, doc="capacity = ceil(c * tokens * top_k / n) per expert; null: drop nothing"
    )
    aux_loss_weight: float = param(0.01, doc="weight of the load-balancing loss n * sum f_e P_e")
    z_loss_weight: float = param(0.001, doc="weight of the router z-loss mean(logsumexp^2)")
    router_jitter: float = param(
        0.0, doc="training only: router input times uniform(1 - eps, 1 + eps); 0: off"
    )

    def validate(self, path: str = "") -> None:
        if self.num_experts < 1:
            raise ConfigError(
                f"{join(path, 'num_experts')}: invalid value {self.num_experts}; allowed: >= 1"
            )
        if self.top_k not in (1, 2) or self.top_k > self.num_experts:
            raise ConfigError(
                f"{join(path, 'top_k')}: invalid value {self.top_k}; allowed: 1 or 2, "
                f"at most num_experts={self.num_experts}"
            )
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ConfigError(
                f"{join(path, 'capacity_factor')}: invalid value {self.capacity_factor}; "
                "allowed: null or > 0"
            )
        for name in ("aux_loss_weight", "z_loss_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(
                    f"{join(path, name)}: invalid value {getattr(self, name)}; allowed: >= 0"
                )
        if not 0.0 <= self.router_jitter < 1.0:
            raise ConfigError(
                f"{join(path, 'router_jitter')}: invalid value {self.router_jitter}; "
                "allowed: 0 <= eps < 1"
            )
        if isinstance(self.expert, MoEConfig):
            raise ConfigError(
                f"{join(path, 'expert.kind')}: invalid value 'moe'; allowed: a non-MoE ffn kind"
            )


class Routing(NamedTuple):
    """One forward's routing of N tokens to n experts."""

    logits: torch.Tensor  # (N, n) router logits
    probs: torch.Tensor  # (N, n) softmax of the logits
    experts: torch.Tensor  # (N, k) chosen experts, best first
    gates: torch.Tensor  # (N, k) combine weights


@FFN.register(MoEConfig)
class MoE(nn.Module):
    """Route each token to its top-k experts (FFNs), combine their outputs with the gate weights."""

    paper = (
        "Anthony et al., 2025, Training Foundation Models on a Full-Stack AMD Platform (ZAYA1), "
        "arXiv:2511.17127; Switch Transformers, arXiv:2101.03961; ST-MoE, arXiv:2202.08906"
    )

    def __init__(self, cfg: MoEConfig, *, dim: int, linear: LinearConfig):
        super().__init__()
        self.config, self.dim = cfg, dim
        self.router = make_linear(linear, dim, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(
            FFN.build(cfg.expert, dim=dim, linear=linear) for _ in range(cfg.num_experts)
        )

    # -- routing ----------------------------------------------------------------------------------
    def capacity(self, tokens: int) -> int | None:
        """Assignments each expert takes for ``tokens`` tokens (None: unlimited)."""
        cf, cfg = self.config.capacity_factor, self.config
        return None if cf is None else math.ceil(cf * tokens * cfg.top_k / cfg.num_experts)

    def route(self, x: torch.Tensor) -> Routing:
        """Routing of the rows of ``x`` (N, D)."""
        eps = self.config.router_jitter
        if self.training and eps:
            x = x * torch.empty_like(x).uniform_(1.0 - eps, 1.0 + eps)
        logits = self.router(x)
        probs = logits.softmax(dim=-1)
        top, experts = probs.topk(self.config.top_k, dim=-1)
        gates = top / top.sum(dim=-1, keepdim=True) if self.config.top_k > 1 else top
        return Routing(logits, probs, experts, gates)

    # -- forward ----------------------------------------------------------------------------------
    def _rows(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``x`` as (N, D) rows in capacity priority order, and the map back to ``x``'s shape."""
        if x.dim() == 3 and self.config.capacity_factor is not None:  # position-major
            B, T, D = x.shape
            return x.transpose(0, 1).reshape(-1, D), lambda y: y.view(T, B, D).transpose(0, 1)
        return x.reshape(-1, x.size(-1)), lambda y: y.view_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, unflatten = self._rows(x)  # (N, D)
        r = self.route(flat)
        out, counts, kept = self._dispatch(flat, r)
        self._record(r, counts, kept)
        return unflatten(out)

    def _dispatch(self, x: torch.Tensor, r: Routing) -> tuple[torch.Tensor, ...]:
        """Sparse path: group assignments by expert, run each expert once, scatter back."""
        n, k = self.config.num_experts, self.config.top_k
        assigned = r.experts.reshape(-1)  # (N*k,) token order, then rank order
        order = torch.argsort(assigned, stable=True)  # by expert; token order kept inside
        counts = torch.bincount(assigned, minlength=n)
        cap = self.capacity(x.size(0))
        kept = counts if cap is None else counts.clamp(max=cap)
        starts = (counts.cumsum(0) - counts).tolist()
        tokens, gates = order // k, r.gates.reshape(-1)[order]
        out = torch.zeros_like(x)
        # with autograd on, an expert with no tokens still runs (on zero rows): every parameter
        # stays in the graph and gets a (zero) gradient, as data-parallel training expects
        grad = torch.is_grad_enabled()
        for e, (start, count) in enumerate(zip(starts, kept.tolist(), strict=True)):
            if not (count or grad):
                continue
            rows = tokens[start : start + count]
            y = self.experts[e](x[rows]) * gates[start : start + count, None]
            out.index_add_(0, rows, y)
        return out, counts, kept

    def dense_reference(self, x: torch.Tensor, *, use_gates: bool = True) -> torch.Tensor:
        """Every expert on every token, masked to the routing (the twin of the sparse path).

        ``use_gates=False`` combines with weight 1 instead of the gates (a deliberately wrong
        combine, used as a negative control)."""
        flat, unflatten = self._rows(x)
        r = self.route(flat)
        n, (N, k) = self.config.num_experts, r.experts.shape
        chosen = nn.functional.one_hot(r.experts, n).to(flat.dtype)  # (N, k, n)
        seq = chosen.reshape(N * k, n)
        position = ((seq.cumsum(0) - seq) * seq).sum(-1).reshape(N, k)  # earlier takers of e
        cap = self.capacity(N)
        keep = torch.ones_like(position) if cap is None else (position < cap).to(flat.dtype)
        weight = (r.gates if use_gates else torch.ones_like(r.gates)) * keep
        combine = (chosen * weight[..., None]).sum(1)  # (N, n)
        outs = torch.stack([expert(flat) for expert in self.experts], dim=1)  # (N, n, D)
        return unflatten((combine[..., None] * outs).sum(1))

    # -- auxiliary losses and metrics -------------------------------------------------------------
    def _record(self, r: Routing, counts: torch.Tensor, kept: torch.Tensor) -> None:
        assignments = r.experts.numel()
        if assignments == 0:  # no tokens: nothing to report (and nothing stale left behind)
            record_aux(self, None, {})
            return
        n, cfg = self.config.num_experts, self.config
        load = counts.to(r.probs.dtype) / assignments  # f_e, no gradient
        balance = n * (load * r.probs.mean(0)).sum()
        z = torch.logsumexp(r.logits, dim=-1).square().mean()
        cv = load.std(unbiased=False) / load.mean() if n > 1 else load.new_zeros(())
        dropped = (counts - kept).sum().to(load.dtype) / assignments
        loss = None
        if cfg.aux_loss_weight or cfg.z_loss_weight:
            loss = cfg.aux_loss_weight * balance + cfg.z_loss_weight * z
        metrics = {
            "moe_load": load,
            "moe_load_cv": cv,
            "moe_dropped_frac": dropped,
            "moe_balance_loss": balance.detach(),
            "moe_z_loss": z.detach(),
        }
        record_aux(self, loss, metrics)

    # -- parameter accounting ---------------------------------------------------------------------
    def inactive_params(self) -> int:
        """Parameters a token does not go through: the experts it is not routed to."""
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        return (self.config.num_experts - self.config.top_k) * per_expert

    @classmethod
    def describe_extra(cls, cfg: MoEConfig) -> dict[str, Any]:
        """Active and total parameters of one layer (formula, and the count at width 256)."""
        dim = 256
        with torch.device("meta"):
            layer = cls(cfg, dim=dim, linear=DenseConfig())
        total = sum(p.numel() for p in layer.parameters())
        n, k = cfg.num_experts, cfg.top_k
        return {
            "parameters": (
                f"total = router (dim x {n}) + {n} experts; active per token = router + {k} "
                f"expert{'s' if k > 1 else ''}"
            ),
            f"params_at_dim_{dim}": {"total": total, "active": total - layer.inactive_params()},
        }
