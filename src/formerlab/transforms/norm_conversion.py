"""Exact conversions of a Pre-LN Transformer into a Pre-RMSNorm or a Pre-CRMSNorm one.

Paper: Zixuan Jiang, Jiaqi Gu, Hanqing Zhu, David Z. Pan, 2023, "Pre-RMSNorm and Pre-CRMSNorm
Transformers: Equivalent and Efficient Pre-LN Transformers", NeurIPS 2023, arXiv:2305.14858.

``fl.transform(model, {"kind": "pre_ln_to_rmsnorm"})`` (or ``pre_ln_to_crmsnorm``) returns a new
model computing the same function (exact up to rounding, eval mode) with cheaper norms:

1. Recentre the main branch. Everything added to the residual stream gets zero mean: token
   embedding rows, learned position rows, and every residual output projection (``W_o`` minus its
   mean over output rows, ``b_o`` minus its mean). LayerNorm removes the mean of its input anyway, so
   nothing downstream changes, and the mean it would remove is now zero: LN(x) = RMSNorm(x)·γ + β.
2. Fold each block norm's γ, β into the projections that read it (the block's stream input ports,
   :func:`formerlab.layers.block.stream_ports`: fused qkv / cross q, fc1, ...): ``W <- W diag(γ)``,
   ``b <- b + W β``. The block norms become ``rmsnorm`` without gain or bias. A port without a bias
   that must absorb a nonzero β gets one by switching its part's ``bias`` field on (new biases of other
   projections start at zero); a part without such a field is refused.
3. The final norm keeps γ and β as ``final_norm: {kind: rmsnorm, bias: true}``; a decoder's head has
   no bias to take β, and this one norm per forward is not where the time goes.
4. A tied head decoded with the original embedding, which step 1 changed, so a tied model comes out
   with ``tie_embeddings: false`` (an MLM head with ``head.tie_embeddings: false``), its head holding
   the original matrix.
5. Pre-CRMSNorm only: the stream is stored compressed (``norm: {kind: crmsnorm}``; see
   :mod:`formerlab.layers.norm.crmsnorm`): embeddings and position rows keep their first ``d - 1``
   coordinates, output ports drop their last row, input ports become ``W[:, :d-1] - W[:, d-1:]``;
   the stream is expanded to ``d`` before the final norm, so heads are unchanged.

Sinusoidal positions become ``learned`` ones holding the recentred table (no position kind adds a
recentred table); rope and none are unaffected. Refused with a ConfigError: norms other than
LayerNorm, placements other than ``pre``, no final norm, non-dense linear kinds, embeddings that are
not lookup tables, other position kinds, sublayers without stream ports.

Differences from the paper: the paper also folds the final norm's γ, β into the head (step 3); and it
argues equivalence in training too, which holds for SGD but not step for step under Adam (whose
updates are not zero-mean) — only the function at conversion time is guaranteed here. Dropout is
kept; in training mode the compressed model drops stored coordinates, not the full vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..layers.block import require_ports
from ..registry import TRANSFORM
from .base import TransformConfig

_POSITIONS = ("learned", "sinusoidal", "rope", "none")
_MODELS = ("decoder_lm", "encoder", "encoder_decoder")
#: (norm, sublayer, config field) of every residual branch of a block
_BRANCHES = (("attn_norm", "attn", "attention"), ("cross_norm", "cross_attn", "cross_attention"))


@dataclass(kw_only=True)
class PreLNToRMSNormConfig(TransformConfig):
    kind = "pre_ln_to_rmsnorm"


@dataclass(kw_only=True)
class PreLNToCRMSNormConfig(TransformConfig):
    kind = "pre_ln_to_crmsnorm"


@TRANSFORM.register(PreLNToRMSNormConfig)
def PreLNToRMSNorm(cfg: PreLNToRMSNormConfig, *, model: nn.Module) -> nn.Module:
    """A Pre-RMSNorm model computing what the Pre-LN ``model`` computes."""
    return convert_pre_ln(model, compressed=False)


@TRANSFORM.register(PreLNToCRMSNormConfig)
def PreLNToCRMSNorm(cfg: PreLNToCRMSNormConfig, *, model: nn.Module) -> nn.Module:
    """A Pre-CRMSNorm model (``dim - 1`` stream) computing what the Pre-LN ``model`` computes."""
    return convert_pre_ln(model, compressed=True)


PAPER = (
    "Jiang, Gu, Zhu & Pan, 2023, Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and "
    "Efficient Pre-LN Transformers, arXiv:2305.14858"
)
PreLNToRMSNorm.paper = PreLNToCRMSNorm.paper = PAPER


def convert_pre_ln(
    model: nn.Module, *, compressed: bool, skip_recentre: str | None = None
) -> nn.Module:
    """The conversion; ``skip_recentre`` names one output projection (``"transformer.blocks.0.attn.
    out_proj"``) left un-recentred: a deliberately broken conversion for negative controls."""
    from ..models import build_model
    from ..models.base import TransformerStack

    cfg = model.config
    stacks = [(n, m) for n, m in model.named_modules() if isinstance(m, TransformerStack)]
    _check(cfg, stacks)
    src = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items()}
    for name, stack in stacks:
        if cfg.position.kind == "sinusoidal":
            src[f"{name}.position.embedding.weight"] = stack.position.table.to(torch.float64)
    new = build_model(_new_config(cfg, stacks, compressed)).to(torch.float64)
    dst = new.state_dict()
    with torch.no_grad():
        for key, value in dst.items():
            if key in src and src[key].shape == value.shape:
                value.copy_(src[key])
        for name, stack in stacks:
            _convert_stack(name, stack, src, dst, compressed, skip_recentre)
        _untie_head(cfg, src, dst)
    dtype = next(model.parameters()).dtype
    return new.to(dtype).train(model.training)


def _check(cfg, stacks) -> None:
    def refuse(field: str, value, allowed: str) -> None:
        raise ConfigError(
            f"model.{field}: {value!r} cannot be converted exactly from Pre-LN; allowed: {allowed}"
        )

    if cfg.kind not in _MODELS or not stacks:
        refuse("kind", cfg.kind, ", ".join(_MODELS))
    if cfg.norm.kind != "layernorm":
        refuse("norm.kind", cfg.norm.kind, "'layernorm'")
    if cfg.norm_placement != "pre":
        refuse("norm_placement", cfg.norm_placement, "'pre'")
    final = cfg.final_norm_config()
    if final is None or final.kind != "layernorm":
        refuse("final_norm", cfg.final_norm, "a layernorm final norm (auto or true)")
    if cfg.linear.kind != "dense":
        refuse("linear.kind", cfg.linear.kind, "'dense'")
    if cfg.position.kind not in _POSITIONS:
        refuse("position.kind", cfg.position.kind, ", ".join(_POSITIONS))
    for _, stack in stacks:
        if not isinstance(stack.embed, nn.Embedding):
            refuse("embedding.kind", cfg.embedding.kind, "a lookup-table kind ('token')")
        for block in stack.blocks:
            for _, sub, field in (*_BRANCHES, ("ffn_norm", "ffn", "ffn")):
                if getattr(block, sub) is not None:
                    require_ports(getattr(block, sub), f"model.{field}", "to fold norms into")


def _new_config(cfg, stacks, compressed: bool):
    final = cfg.final_norm_config()
    data = cfg.to_dict()
    data["norm"] = {"kind": "crmsnorm" if compressed else "rmsnorm", "eps": cfg.norm.eps}
    data["norm"].update({"scale": False} if compressed else {"scale": False, "bias": False})
    data["final_norm"] = {"kind": "rmsnorm", "eps": final.eps}
    data["final_norm"].update(scale=final.scale, bias=final.bias)
    if data.get("tie_embeddings"):
        data["tie_embeddings"] = False
    if data.get("head", {}).get("tie_embeddings"):
        data["head"]["tie_embeddings"] = False
    if cfg.position.kind == "sinusoidal":
        data["position"] = {"kind": "learned"}
    for _, stack in stacks:
        for i, block in enumerate(stack.blocks):
            for norm, sub, field in (*_BRANCHES, ("ffn_norm", "ffn", "ffn")):
                if getattr(block, sub) is not None and _needs_bias(block, norm, sub):
                    _enable_bias(data, field, i)
    return type(cfg).from_dict(data, "model")


def _needs_bias(block: nn.Module, norm: str, sub: str) -> bool:
    """A nonzero β meets an input port without a bias."""
    beta = getattr(getattr(block, norm), "bias", None)
    if beta is None or not bool(beta.detach().ne(0).any()):
        return False
    inputs, _ = require_ports(getattr(block, sub), "model", "")
    return any(getattr(getattr(block, sub).get_submodule(n), "bias", None) is None for n in inputs)


def _enable_bias(data: dict, field: str, block: int) -> None:
    section = data[field]
    if field == "ffn" and data.get("layer_ffns"):
        section = data["layer_ffns"][block]
    if "bias" not in section:
        raise ConfigError(
            f"model.{field}.kind: {section['kind']!r} has a projection without a bias that must "
            "absorb LayerNorm's nonzero bias β, and no `bias` field to add one; cannot convert "
            "exactly"
        )
    section["bias"] = True


def _zero_mean(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return t - t.mean(dim=dim, keepdim=True)


def _put(dst: dict, key: str, value: torch.Tensor, compressed: bool) -> None:
    """Write a zero-mean stream table (last dim = model width), compressed when asked."""
    dst[key].copy_(value[..., :-1] if compressed else value)


def _convert_stack(name, stack, src, dst, compressed: bool, skip: str | None) -> None:
    embed_key = f"{name}.embed.compressed.weight" if compressed else f"{name}.embed.weight"
    _put(dst, embed_key, _zero_mean(src[f"{name}.embed.weight"]), compressed)
    position_key = f"{name}.position.embedding.weight"
    if position_key in src:
        _put(dst, position_key, _zero_mean(src[position_key]), compressed)
    for i, block in enumerate(stack.blocks):
        for norm, sub, _ in (*_BRANCHES, ("ffn_norm", "ffn", "ffn")):
            if getattr(block, sub) is None:
                continue
            prefix = f"{name}.blocks.{i}"
            inputs, outputs = require_ports(getattr(block, sub), "model", "")
            gamma, beta = src.get(f"{prefix}.{norm}.weight"), src.get(f"{prefix}.{norm}.bias")
            for port in inputs:
                _fold_input(dst, src, f"{prefix}.{sub}.{port}", gamma, beta, compressed)
            for port in outputs:
                key = f"{prefix}.{sub}.{port}"
                _recentre_output(dst, src, key, compressed, recentre=key != skip)


def _fold_input(dst, src, key: str, gamma, beta, compressed: bool) -> None:
    """y = W (γ ⊙ n + β) + b  ->  (W diag γ) n + (b + W β); compressed: W[:, :d-1] - W[:, d-1:]."""
    weight = src[f"{key}.weight"]
    folded = weight * gamma if gamma is not None else weight
    if compressed:
        folded = folded[:, :-1] - folded[:, -1:]
    dst[f"{key}.weight"].copy_(folded)
    if beta is None or not bool(beta.ne(0).any()):
        return
    if f"{key}.bias" not in dst:
        raise ConfigError(
            f"{key}: has no bias to absorb LayerNorm's nonzero bias β (and its kind cannot add "
            "one); cannot convert exactly"
        )
    bias, shift = src.get(f"{key}.bias"), weight @ beta
    dst[f"{key}.bias"].copy_(shift if bias is None else bias + shift)


def _recentre_output(dst, src, key: str, compressed: bool, *, recentre: bool) -> None:
    """W_o, b_o -> minus their mean over output rows (the branch output becomes zero-mean)."""
    weight = src[f"{key}.weight"]
    weight = _zero_mean(weight, 0) if recentre else weight
    dst[f"{key}.weight"].copy_(weight[:-1] if compressed else weight)
    if f"{key}.bias" in dst:
        bias = src.get(f"{key}.bias")
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype) if bias is None else bias
        bias = _zero_mean(bias) if recentre else bias
        dst[f"{key}.bias"].copy_(bias[:-1] if compressed else bias)


def _untie_head(cfg, src: dict, dst: dict) -> None:
    """A tied head keeps decoding with the original (un-recentred) embedding matrix."""
    embed = next(src[k] for k in src if k.endswith("embed.weight"))
    if getattr(cfg, "tie_embeddings", False) and "lm_head.weight" in dst:
        dst["lm_head.weight"].copy_(embed)
    head = getattr(cfg, "head", None)
    if head is not None and getattr(head, "tie_embeddings", False):
        dst["head.decoder.weight"].copy_(embed)


__all__ = [
    "PreLNToCRMSNorm",
    "PreLNToCRMSNormConfig",
    "PreLNToRMSNorm",
    "PreLNToRMSNormConfig",
    "convert_pre_ln",
]
