"""FIT: local layers inside groups of tokens, global layers over a few latent tokens per group.

Paper: Ting Chen and Lala Li, 2023, "FIT: Far-reaching Interleaved Transformers", arXiv:2305.12689
(code: google-research/pix2seq). The ``L`` data tokens are cut into ``G`` groups of ``n``
(``group_size``); each group owns ``m`` latent tokens (``latents_per_group``, a learned initial value
per group and latent). One FIT block (``depth`` of them) runs:

1. read:   ``Z_g <- Z_g + CrossAttn(Z_g -> X_g)``  (latents read their group's data)
2. global: ``global_layers`` Transformer layers over all ``G*m`` latents
3. write:  ``X_g <- X_g + CrossAttn(X_g -> Z_g)``  (data read their group's latents)
4. local:  ``local_layers`` Transformer layers inside each group (``G`` batched sequences of ``n``)

Attention cost per block is ``G n^2`` locally and ``(G m)^2`` globally; with ``n ~ L^(1/3)`` both are
``Theta(L^(4/3))`` (:func:`attention_flops` counts them). ``global_layers: 0`` drops the latent path
(no latents, no read/write): a local-only model, and with one group (``group_size >= L``) exactly a
standard stack of ``depth * local_layers`` blocks.

Modes: ``encoder`` (bidirectional, ``head`` applied as in kind ``encoder``) and ``decoder_lm``
(a causal LM over the vocabulary as in kind ``decoder_lm``). In the causal form no token sees the
future: local layers are causal inside the group; latents of group ``g`` read all of group ``g``,
global layers are causal over the latents flattened group by group, and the data of group ``g`` read
the latents of group ``g - 1`` (shifted by one group, as the paper's ``FITAR``); group 0 reads
``start`` latents (learned, data-independent).

Lengths that are not a multiple of ``n`` are padded at the end with masked tokens; a padding
``attention_mask`` masks local keys, the read's keys, and the latents of groups without a real token.

Differences from the paper: the paper's block runs local layers first and read/global/write after
(``FITAR``); here read/global/write come first so the last block ends with local layers, as the
brief of this library lays it out (claims.md §21). The causal global layers use the attention kind's
token-causal mask over the flattened latents, which also orders the latents inside a group (the
paper's chunk mask lets them see each other); group 0 reads learned start latents where the paper
reads zeros. Read/write layers are pre-norm cross-attention without MLP (the paper's
``use_mlp=False``, with a norm on the context) whatever ``norm_placement`` says; latents have the
data width (no separate ``latent_dim``); data positions are the model's ``position`` kind over the
whole sequence (rotary: inside the group), latents get no position but their learned init.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..config import join, param
from ..errors import ConfigError, InputError
from ..layers.attention import AttentionConfig, SoftmaxAttentionConfig
from ..layers.attention.base import capability, require
from ..ops.masks import positions_from_mask
from ..registry import MODEL
from .base import TransformerConfig, TransformerStack, check_attention, init_weights, make_lm_head
from .decoder_lm import LMLogits
from .encoder import apply_head, build_head, check_mask_support
from .fit_block import FITBlock
from .generation import generate
from .heads import ClassifierHeadConfig, HeadConfig


@dataclass(kw_only=True)
class FITConfig(TransformerConfig):
    """``depth`` FIT blocks of (read, ``global_layers``, write, ``local_layers``)."""

    kind = "fit"
    mode: Literal["encoder", "decoder_lm"] = param(
        "encoder", doc="encoder: bidirectional + head; decoder_lm: causal LM over the vocabulary"
    )
    group_size: int = param(16, doc="data tokens per group (n); longer inputs are padded to n*G")
    latents_per_group: int = param(4, doc="latent tokens per group (m)")
    local_layers: int = param(1, doc="layers inside each group, per FIT block")
    global_layers: int = param(
        1, doc="layers over all latents, per FIT block; 0: local-only, no latent path"
    )
    cross_attention: AttentionConfig = param(
        factory=SoftmaxAttentionConfig, doc="attention kind of the read/write cross-attention"
    )
    head: HeadConfig = param(factory=ClassifierHeadConfig, doc="output head (mode encoder only)")

    @property
    def interface(self) -> str:
        """Tasks written for this model kind also train a FIT model in this mode."""
        return self.mode

    def validate(self, path: str = "") -> None:
        super().validate(path)
        for name, low in (("group_size", 1), ("latents_per_group", 1)):
            self._at_least(path, name, low)
        for name in ("local_layers", "global_layers"):
            self._at_least(path, name, 0)
        if self.local_layers + self.global_layers == 0:
            raise ConfigError(
                f"{join(path, 'local_layers')}: 0 with global_layers=0 leaves no layer; "
                "allowed: local_layers + global_layers >= 1"
            )
        if self.mode == "decoder_lm":
            check_attention(self, path, causal=True)
        require(self.cross_attention, "supports_cross", join(path, "cross_attention"), "by fit")
        require(
            self.cross_attention,
            "supports_padding_mask",
            join(path, "cross_attention"),
            "by fit (padded groups)",
        )
        if self.layer_ffns is not None:
            raise ConfigError(
                f"{join(path, 'layer_ffns')}: per-block FFN configs are not supported by fit; "
                "allowed: null"
            )
        if self.compressed_stream:
            raise ConfigError(
                f"{join(path, 'norm.kind')}: {self.norm.kind!r} compresses the stream, which fit's "
                "latents do not support; allowed: a norm kind without compressed_stream"
            )

    def _at_least(self, path: str, name: str, low: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(
                f"{join(path, name)}: invalid value {value!r}; allowed: an int >= {low}"
            )

    @property
    def causal(self) -> bool:
        return self.mode == "decoder_lm"

    @property
    def max_groups(self) -> int:
        return math.ceil(self.max_seq_len / self.group_size)


def attention_flops(cfg: FITConfig, seq_len: int) -> int:
    """Multiply-add FLOPs of the attention matmuls (scores and mixing, ``4 Tq Tk dim`` per layer;
    causal masks not subtracted, projections and FFNs not counted) of one ``seq_len`` sequence."""
    n, m, d = cfg.group_size, cfg.latents_per_group, cfg.dim
    groups = math.ceil(seq_len / n)
    local = cfg.local_layers * groups * n * n
    latent = 0
    if cfg.global_layers:
        latent = cfg.global_layers * (groups * m) ** 2 + 2 * groups * m * n  # global, read, write
    return 4 * d * cfg.depth * (local + latent)


def full_attention_flops(seq_len: int, dim: int, layers: int) -> int:
    """The same count for ``layers`` layers of full self-attention over ``seq_len`` tokens."""
    return 4 * dim * layers * seq_len * seq_len


@MODEL.register(FITConfig)
class FIT(LMLogits, nn.Module):
    """``encode(ids, mask) -> (B, L, D)``; ``model(ids, mask)``: the head (encoder) or logits
    (decoder_lm); ``generate`` (decoder_lm) recomputes the prefix every step (no KV cache)."""

    paper = "Chen & Li, 2023, FIT: Far-reaching Interleaved Transformers, arXiv:2305.12689"
    supports_kv_cache = False

    def __init__(self, cfg: FITConfig):
        super().__init__()
        self.config = cfg
        self.pair_input = bool(getattr(cfg.head, "pair_input", False)) and not cfg.causal
        # embedding, positions, input checks and the final norm; FIT's own blocks below
        self.transformer = TransformerStack(cfg, depth=0, causal=cfg.causal)
        self.blocks = nn.ModuleList(FITBlock(cfg) for _ in range(cfg.depth))
        m, D = cfg.latents_per_group, cfg.dim
        latent = cfg.global_layers > 0
        self.latents = nn.Parameter(torch.zeros(cfg.max_groups, m, D)) if latent else None
        self.start = nn.Parameter(torch.zeros(m, D)) if latent and cfg.causal else None
        self.head = self.lm_head = None
        if not cfg.causal:
            self.head = build_head(cfg, self.transformer.embed)
        else:
            self.lm_head = make_lm_head(cfg)
        layers = cfg.depth * (cfg.local_layers + cfg.global_layers + 2 * latent)
        init_weights(self, cfg.init_std, layers)
        for p in (self.latents, self.start):
            if p is not None:
                nn.init.normal_(p, std=cfg.init_std)

    def _shift(self, z: torch.Tensor, group_real: torch.Tensor | None) -> torch.Tensor:
        """Causal write source: group g reads group g-1's latents (group 0 and groups after a
        group with no real token read the start latents)."""
        start = self.start.expand(z.size(0), 1, *self.start.shape)
        prev = torch.cat([start, z[:, :-1]], dim=1)
        if group_real is None:
            return prev
        prev_real = torch.cat([group_real.new_ones(z.size(0), 1), group_real[:, :-1]], dim=1)
        return torch.where(prev_real[:, :, None, None], prev, start)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L) ids -> (B, L, D) hidden states after the final norm."""
        cfg, stack = self.config, self.transformer
        stack.check_input(input_ids)
        self._check_mask(input_ids, attention_mask)
        B, L = input_ids.shape
        n, m = cfg.group_size, cfg.latents_per_group
        G = math.ceil(L / n)
        if attention_mask is not None:
            position_ids = positions_from_mask(attention_mask)
        else:
            position_ids = torch.arange(L, device=input_ids.device)
        x = stack.position(stack.embed(input_ids), position_ids)
        x = nn.functional.dropout(x, cfg.dropout, self.training) if cfg.dropout else x
        mask = attention_mask
        if G * n > L and not cfg.causal:
            self._check_padding(L)
        if G * n > L:  # pad the last group; a causal model never looks ahead, so needs no mask
            x = nn.functional.pad(x, (0, 0, 0, G * n - L))
            if mask is not None or not cfg.causal:
                real = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask
                mask = nn.functional.pad(real.bool(), (0, G * n - L), value=False)
        group_real = mask.reshape(B, G, n).any(-1) if mask is not None else None
        ctx = {
            "local_mask": mask.reshape(B * G, n) if mask is not None else None,
            "latent_mask": group_real.repeat_interleave(m, 1) if mask is not None else None,
            "rotary": stack.position.rotary(torch.arange(n, device=x.device), x.dtype),
            "shift": (lambda z: self._shift(z, group_real)) if cfg.causal else None,
        }
        x = x.reshape(B * G, n, -1)
        z = None
        if self.latents is not None:
            z = self.latents[:G].expand(B, G, m, cfg.dim)
        for block in self.blocks:
            x, z = block(x, z, ctx)
        return stack.final_norm(x.reshape(B, G * n, -1)[:, :L])

    def _check_mask(self, input_ids: torch.Tensor, mask: torch.Tensor | None) -> None:
        if mask is not None and mask.shape != input_ids.shape:
            raise InputError(
                f"attention_mask: shape {tuple(mask.shape)}; expected the shape of input_ids "
                f"{tuple(input_ids.shape)}"
            )
        check_mask_support(self.config.attention, mask)

    def _check_padding(self, length: int) -> None:
        if not capability(self.config.attention, "supports_padding_mask"):
            raise InputError(
                f"input_ids: length {length} is not a multiple of group_size="
                f"{self.config.group_size}, and attention {self.config.attention.kind!r} lacks "
                "supports_padding_mask to mask the padded group; allowed: a multiple of group_size"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cache: Any = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        if cache is not None:
            raise InputError("cache: fit keeps no KV cache (supports_kv_cache is False)")
        if self.config.causal:
            return self.logits(self.encode(input_ids, attention_mask), last_only)
        return apply_head(self, input_ids, attention_mask)

    def generate(self, prompt_ids: Any, max_new_tokens: int = 64, **kwargs: Any) -> Any:
        """See :func:`formerlab.models.generation.generate` (mode decoder_lm only)."""
        if not self.config.causal:
            raise InputError("generate: fit model in mode 'encoder'; allowed: mode 'decoder_lm'")
        kwargs.setdefault("use_cache", False)
        return generate(self, prompt_ids, max_new_tokens, **kwargs)

    def attention_flops(self, seq_len: int) -> int:
        """See :func:`attention_flops`."""
        return attention_flops(self.config, seq_len)
