"""Shared model config fields and the embedding → blocks → final-norm stack every model uses.

Norm placement (``norm_placement``) is ``pre``, ``post`` or ``peri`` (see :mod:`formerlab.layers.block`);
``final_norm`` says whether a norm follows the last block: ``auto`` (on for pre and peri, off for
post), ``true``/``false``, or a norm config of its own (a converted Pre-RMSNorm model keeps LayerNorm's
gain and bias in its final ``{kind: rmsnorm, bias: true}`` while its block norms have none).

Compressed stream: with a norm kind that sets ``compressed_stream`` (``crmsnorm``) the residual stream
holds ``dim - 1`` coordinates of a zero-mean vector. The token embedding stores ``dim - 1`` columns
(its ``weight`` property gives the full zero-mean ``(V, dim)`` matrix that a tied head decodes with),
additive position tables are stored compressed, the blocks shrink their stream ports, and the stack
expands the stream back to ``dim`` at the end, so heads and ``encode`` see ordinary ``dim``-vectors: a
compressed final norm (``crmsnorm``) normalises before the expansion, any other kind after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..config import KindConfig, join, param
from ..errors import ConfigError, InputError
from ..layers.attention import AttentionConfig, DecodeCache, SoftmaxAttentionConfig
from ..layers.attention.base import require
from ..layers.block import TransformerBlock
from ..layers.embedding import EmbeddingConfig, TokenEmbeddingConfig
from ..layers.ffn import FFNConfig, MLPConfig
from ..layers.linear import DenseConfig, LinearConfig, make_linear
from ..layers.norm import LayerNormConfig, NormConfig
from ..layers.norm.crmsnorm import compress, expand
from ..layers.position import LearnedPositionConfig, PositionConfig
from ..ops.masks import positions_from_mask
from ..registry import EMBEDDING, NORM, POSITION


@dataclass(kw_only=True)
class ModelConfig(KindConfig):
    group: ClassVar[str] = "model"
    max_seq_len: int = param(256, doc="longest sequence the model accepts")

    def check_task(self, task: Any, path: str = "model") -> None:
        seq_len = getattr(task, "seq_len", None)
        if seq_len is not None and self.max_seq_len < seq_len:
            raise ConfigError(
                f"{join(path, 'max_seq_len')}: {self.max_seq_len} is shorter than "
                f"task.seq_len={seq_len}; allowed: >= {seq_len}"
            )


@dataclass(kw_only=True)
class TransformerConfig(ModelConfig):
    """Fields shared by decoder, encoder and encoder-decoder models (DESIGN §5)."""

    vocab_size: int = param(256, doc="number of token ids")
    dim: int = param(256, doc="model width")
    depth: int = param(4, doc="number of blocks")
    num_heads: int = param(4, doc="attention heads")
    attention: AttentionConfig = param(factory=SoftmaxAttentionConfig, doc="attention kind")
    norm: NormConfig = param(factory=LayerNormConfig, doc="normalisation kind")
    norm_placement: Literal["pre", "post", "peri"] = param(
        "pre",
        doc="where each block normalises: pre x+f(n(x)), post n(x+f(x)), peri x+n(f(n(x))) (Peri-LN)",
    )
    final_norm: Literal["auto"] | bool | NormConfig = param(
        "auto",
        doc="norm after the last block: auto (on for pre/peri, off for post), true, false, "
        "or a norm config of its own",
    )
    ffn: FFNConfig = param(factory=MLPConfig, doc="feed-forward kind")
    layer_ffns: list[FFNConfig] | None = param(
        None,
        doc="one FFN config per block, block 0 first (e.g. Mix'n'Match widths); replaces ffn "
        "in every block; null: every block uses ffn",
    )
    position: PositionConfig = param(factory=LearnedPositionConfig, doc="position kind")
    linear: LinearConfig = param(factory=DenseConfig, doc="linear kind of every projection")
    embedding: EmbeddingConfig = param(factory=TokenEmbeddingConfig, doc="token embedding kind")
    tie_embeddings: bool = param(True, doc="output head shares the token embedding matrix")
    dropout: float = param(0.0, doc="dropout on embeddings and residual branches")
    init_std: float = param(0.02, doc="std of the normal initialisation of weights")

    def validate(self, path: str = "") -> None:
        for name in ("vocab_size", "dim", "depth", "num_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{join(path, name)}: {getattr(self, name)} must be >= 1")
        if self.attention.head_dim is None and self.dim % self.num_heads:
            raise ConfigError(
                f"{join(path, 'dim')}: {self.dim} is not divisible by num_heads={self.num_heads}; "
                f"allowed: a multiple of {self.num_heads}, or set attention.head_dim"
            )
        kv = getattr(self.attention, "num_kv_heads", None)
        if kv is not None and self.num_heads % kv:
            raise ConfigError(
                f"{join(path, 'attention.num_kv_heads')}: {kv} does not divide "
                f"num_heads={self.num_heads}; allowed: a divisor of {self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{join(path, 'dropout')}: {self.dropout}; allowed: 0 <= p < 1")
        self._validate_norms(path)
        if self.layer_ffns is not None and len(self.layer_ffns) != self.depth:
            raise ConfigError(
                f"{join(path, 'layer_ffns')}: {len(self.layer_ffns)} configs for depth={self.depth}; "
                f"allowed: null or exactly {self.depth} (one per block)"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``attention.head_dim`` when set, else dim / num_heads."""
        return self.attention.head_dim or self.dim // self.num_heads

    def _validate_norms(self, path: str) -> None:
        if self.compressed_stream and self.dim < 2:
            raise ConfigError(
                f"{join(path, 'dim')}: {self.dim}; a compressed stream (norm kind "
                f"{self.norm.kind!r}) needs dim >= 2"
            )
        final = self.final_norm
        if isinstance(final, NormConfig) and final.compressed_stream and not self.compressed_stream:
            raise ConfigError(
                f"{join(path, 'final_norm.kind')}: {final.kind!r} reads a compressed stream but "
                f"norm kind {self.norm.kind!r} keeps a full one; allowed: a norm kind without "
                "compressed_stream, or a compressed norm kind for `norm` too"
            )

    @property
    def compressed_stream(self) -> bool:
        """True when the residual stream is stored in ``dim - 1`` coordinates (``crmsnorm``)."""
        return bool(self.norm.compressed_stream)

    def final_norm_config(self) -> NormConfig | None:
        """The norm after the last block (``final_norm`` resolved), or None for no final norm."""
        choice = self.final_norm
        if choice == "auto":
            choice = self.norm_placement != "post"
        if choice is True:
            return self.norm
        return None if choice is False else choice


class CompressedEmbedding(nn.Module):
    """A token embedding for a compressed stream: ``forward`` gives ``dim - 1`` coordinates; ``weight``
    is the full zero-mean ``(V, dim)`` matrix those rows stand for (what a tied head decodes with)."""

    def __init__(self, embedding: nn.Module):
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise ConfigError(
                f"model.embedding.kind: {type(embedding).__name__} is not a lookup table; allowed "
                "with a compressed stream (crmsnorm): an nn.Embedding-based kind such as 'token'"
            )
        with torch.no_grad():
            embedding.weight = nn.Parameter(compress(embedding.weight))
        embedding.embedding_dim -= 1
        self.compressed = embedding

    @property
    def weight(self) -> torch.Tensor:
        return expand(self.compressed.weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.compressed(input_ids)


def compress_tables(position: nn.Module, dim: int) -> None:
    """Store an additive position kind's ``dim``-wide tables (parameters and buffers whose last
    dimension is ``dim``) compressed: zero-mean, first ``dim - 1`` coordinates."""
    with torch.no_grad():
        for module in position.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if p.shape[-1] == dim:
                    setattr(module, name, nn.Parameter(compress(p)))
            for name, b in list(module.named_buffers(recurse=False)):
                if b.shape[-1] == dim:
                    setattr(module, name, compress(b))
            if isinstance(module, nn.Embedding) and module.embedding_dim == dim:
                module.embedding_dim -= 1


class TransformerStack(nn.Module):
    """Token embedding + positions → ``depth`` blocks → final norm (``final_norm``)."""

    def __init__(
        self,
        cfg: TransformerConfig,
        *,
        depth: int,
        causal: bool,
        cross: bool = False,
        embedding: nn.Module | None = None,
    ):
        super().__init__()
        self.config, self.causal = cfg, causal
        self.compressed = cfg.compressed_stream
        if embedding is None:
            embedding = EMBEDDING.build(cfg.embedding, vocab_size=cfg.vocab_size, dim=cfg.dim)
            embedding = CompressedEmbedding(embedding) if self.compressed else embedding
        self.embed = embedding
        self.position = POSITION.build(
            cfg.position, dim=cfg.dim, head_dim=cfg.head_dim, max_seq_len=cfg.max_seq_len
        )
        if self.compressed:
            compress_tables(self.position, cfg.dim)
        self.dropout = cfg.dropout
        ffns = cfg.layer_ffns or [cfg.ffn] * depth
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, causal=causal, cross=cross, ffn=ffns[i]) for i in range(depth)
        )
        final = cfg.final_norm_config()
        self.final_norm = nn.Identity() if final is None else NORM.build(final, dim=cfg.dim)
        #: the final norm reads the compressed stream (else it reads the expanded one)
        self.final_compressed = final is not None and final.compressed_stream

    def check_input(self, input_ids: torch.Tensor, offset: int = 0) -> None:
        """Raise InputError before any compute for bad ids or too-long sequences."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int, torch.int16):
            raise InputError(
                f"input_ids: expected a (batch, seq) integer tensor, got shape "
                f"{tuple(input_ids.shape)} dtype {input_ids.dtype}"
            )
        vocab = self.config.vocab_size
        if input_ids.numel():
            low, high = (int(v) for v in torch.aminmax(input_ids))
            if low < 0 or high >= vocab:
                bad = high if high >= vocab else low
                raise InputError(f"input_ids: token id {bad} out of range; allowed: 0..{vocab - 1}")
        end = offset + input_ids.size(1)
        if end > self.config.max_seq_len:
            raise InputError(
                f"input_ids: sequence length {end} exceeds max_seq_len={self.config.max_seq_len}"
            )

    def embed_input(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        offset: int,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token embeddings plus positions (dropout in training), and the rotary tables; positions
        count real tokens under ``attention_mask`` and start at ``offset`` (cached tokens)."""
        T = input_ids.size(1)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, -T:]
            else:
                position_ids = torch.arange(offset, offset + T, device=input_ids.device)
        x = self.position(self.embed(input_ids), position_ids)
        if self.dropout:
            x = nn.functional.dropout(x, self.dropout, self.training)
        return x, self.position.rotary(position_ids, x.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DecodeCache | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        static = cache is not None and cache.static is not None
        offset = cache.length if cache is not None else 0
        if not static:  # a static decode step is checked once, by generate (no host syncs here)
            self.check_input(input_ids, offset)
        x, rotary = self.embed_input(input_ids, attention_mask, position_ids, offset)
        T = input_ids.size(1)
        context_args = {"context": context, "context_mask": context_mask}
        for i in range(len(self.blocks)):
            x = self.call_block(i, x, cache, i, attention_mask, rotary, **context_args)
        if cache is not None and not static:
            cache.length = offset + T
        return self.finish(x)

    def call_block(
        self,
        index: int,
        x: torch.Tensor,
        cache: DecodeCache | None,
        call: int,
        attention_mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        **context_args: Any,
    ) -> torch.Tensor:
        """Block ``index`` on the stream ``x``; as the ``call``-th block call of this forward it
        keeps its keys and values in ``cache[call]`` (a block that runs twice has two entries)."""
        layer_cache = cache[call] if cache is not None else None
        return self.blocks[index](
            x, attention_mask=attention_mask, rotary=rotary, cache=layer_cache, **context_args
        )

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm after the last block; a compressed stream is expanded back to ``dim``
        after a compressed final norm, before any other (see the module docstring)."""
        if not self.compressed:
            return self.final_norm(x)
        if self.final_compressed:
            return expand(self.final_norm(x))
        return self.final_norm(expand(x))

    @property
    def supports_kv_cache(self) -> bool:
        return all(getattr(b.attn, "supports_kv_cache", False) for b in self.blocks)

    @property
    def supports_static_cache(self) -> bool:
        """Decode steps can run on fixed buffers (``generate(compile=True)``)."""
        return all(getattr(b.attn, "supports_static_cache", False) for b in self.blocks)


def make_lm_head(cfg: TransformerConfig) -> nn.Module | None:
    """The output projection dim -> vocab (``cfg.linear``), or None when it is tied to the embedding."""
    if cfg.tie_embeddings:
        return None
    return make_linear(cfg.linear, cfg.dim, cfg.vocab_size, bias=False)


def lm_logits(h: torch.Tensor, lm_head: nn.Module | None, embedding: nn.Module) -> torch.Tensor:
    """Vocabulary logits of hidden states: the untied head, or the tied embedding matrix."""
    if lm_head is None:
        return nn.functional.linear(h, embedding.weight)
    return lm_head(h)


def check_attention(cfg: TransformerConfig, path: str, *, causal: bool) -> None:
    """Capabilities a model needs from its attention kind, checked when the config is validated."""
    if causal:
        require(cfg.attention, "supports_causal", join(path, "attention"), "by a causal model")


def init_weights(model: nn.Module, std: float, depth: int) -> None:
    """Normal(0, std) for linear and embedding weights, zero biases; projections that write into the
    residual stream (``residual_out``) get std / sqrt(2 * depth) (GPT-2's scaled initialisation).
    A linear kind with ``init_normal_(std)`` initialises itself (its submodules are left alone)."""
    skip: set[int] = set()
    for module in model.modules():
        if id(module) in skip:
            continue
        scale = 1 / math.sqrt(2 * depth) if getattr(module, "residual_out", False) else 1.0
        if callable(getattr(module, "init_normal_", None)):
            module.init_normal_(std * scale)
            skip.update(id(m) for m in module.modules())
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
