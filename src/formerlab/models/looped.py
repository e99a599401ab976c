"""``looped`` (encoder with a head) and ``looped_lm`` (causal LM): the AlgoFormer depth scheme, a
pre-transformer, a weight-shared looped transformer run K times, then a post-transformer.

Paper: Yihang Gao, Chuanyang Zheng, Enze Xie, Han Shi, Tianyang Hu, Yu Li, Michael K. Ng, Zhenguo Li,
Zhaoqiang Liu, 2024, "On the Expressive Power of a Variant of the Looped Transformer" (v2: "AlgoFormer:
An Efficient Transformer Framework with Algorithmic Structures"), arXiv:2402.13572.

Y = post(loop^K(pre(X))). ``depth`` counts the distinct (parameterised) blocks, as in every model
kind: blocks ``0 .. pre_depth-1`` are the pre-transformer, the last ``post_depth`` the
post-transformer, and the ``loop_depth = depth - pre_depth - post_depth`` blocks between them the
looped transformer. So a ``looped`` model has exactly the parameters (and state-dict names) of an
``encoder`` of the same depth, whatever K is; ``pre_depth = post_depth = 0`` is the vanilla looped
transformer (the whole stack repeated).

K is ``loops`` in training mode and ``eval_loops`` (null: ``loops``) in eval mode; ``model.loops = K``
overrides both at run time (``None`` restores them) and ``forward(..., loops=K)`` overrides one call,
for extrapolation to more iterations than trained with.

Input injection (``input_injection: true``): with p the stream after the pre-transformer, iteration 1
reads p and every later iteration reads its predecessor's output plus p, h_1 = p,
h_{k+1} = loop(h_k) + p, Y = post(loop(h_K)): the input injection of Yang, Lee, Nowak,
Papailiopoulos, 2023, "Looped Transformers are Better at Learning Learning Algorithms",
arXiv:2311.12424, written for a residual stream (start from zero, add p before every iteration).

Decoding (``looped_lm``): every (iteration, block) call has keys and values of its own, so the KV cache
(:class:`~formerlab.layers.attention.DecodeCache`) holds one entry per call, ``pre_depth + K *
loop_depth + post_depth`` of them (``model.new_cache()`` sizes it for the K then active).

Initialisation: exactly an ``encoder`` / ``decoder_lm`` of the same ``depth`` (GPT-2's std / sqrt(2 *
depth) on residual-out projections, depth = distinct blocks), so models that differ only in K start
from the same weights under the same seed.

Differences from the paper: the paper's looped transformer is a GPT-2 decoder trained on in-context
regression with readout heads; here the scheme is a depth option of the library's encoder and decoder
LM (any attention, norm, FFN and linear kind). K is fixed per mode (the paper also samples K at random
during training); input injection is optional and off by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..config import join, param
from ..errors import ConfigError, InputError
from ..layers.attention import DecodeCache
from ..registry import MODEL
from .base import TransformerStack
from .decoder_lm import CausalLM, DecoderLMConfig
from .encoder import EncoderConfig, HeadEncoder, apply_head, check_mask_support

PAPER = (
    "Gao, Zheng, Xie, Shi, Hu, Li, Ng, Li, Liu, 2024, On the Expressive Power of a Variant of the "
    "Looped Transformer (AlgoFormer), arXiv:2402.13572"
)


@dataclass(kw_only=True)
class LoopFields:
    """The looping fields shared by ``looped`` and ``looped_lm`` (mixed into their configs)."""

    pre_depth: int = param(0, doc="blocks before the loop (pre-transformer), run once")
    post_depth: int = param(0, doc="blocks after the loop (post-transformer), run once")
    loops: int = param(2, doc="iterations K of the loop's depth - pre_depth - post_depth blocks")
    eval_loops: int | None = param(None, doc="iterations in eval mode; null: loops")
    input_injection: bool = param(
        False, doc="add the pre-transformer output to the stream before every loop iteration"
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)  # the model config's own checks (next in the MRO)
        for name in ("pre_depth", "post_depth"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{join(path, name)}: {getattr(self, name)}; allowed: >= 0")
        if self.loop_depth < 1:
            raise ConfigError(
                f"{join(path, 'depth')}: {self.depth} leaves no block for the loop after "
                f"pre_depth={self.pre_depth} and post_depth={self.post_depth}; allowed: depth >= "
                f"{self.pre_depth + self.post_depth + 1}"
            )
        if self.loops < 1:
            raise ConfigError(f"{join(path, 'loops')}: {self.loops}; allowed: >= 1")
        if self.eval_loops is not None and self.eval_loops < 1:
            raise ConfigError(
                f"{join(path, 'eval_loops')}: {self.eval_loops}; allowed: null or >= 1"
            )

    @property
    def loop_depth(self) -> int:
        """Distinct blocks inside the loop."""
        return self.depth - self.pre_depth - self.post_depth

    def calls(self, loops: int) -> int:
        """Block calls of one forward pass with ``loops`` iterations."""
        return self.pre_depth + loops * self.loop_depth + self.post_depth


@dataclass(kw_only=True)
class LoopedConfig(LoopFields, EncoderConfig):
    """AlgoFormer encoder: pre-, looped and post-transformer, then the head."""

    kind = "looped"
    #: tasks written for this model kind also train this one (same forward / encode interface)
    interface: ClassVar[str] = "encoder"


@dataclass(kw_only=True)
class LoopedLMConfig(LoopFields, DecoderLMConfig):
    """AlgoFormer causal language model: pre-, looped and post-transformer, then the LM head."""

    kind = "looped_lm"
    interface: ClassVar[str] = "decoder_lm"


def check_loops(value: Any, name: str = "loops") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name}: {value!r}; allowed: an int >= 1 (or None: the config's)")
    return value


class LoopedStack(TransformerStack):
    """The embedding, blocks and final norm of :class:`TransformerStack`; ``forward`` runs the
    blocks in the pre / loop x K / post order."""

    def __init__(self, cfg: LoopedConfig | LoopedLMConfig, *, causal: bool):
        super().__init__(cfg, depth=cfg.depth, causal=causal)
        #: run-time override of K (None: ``loops`` in training, ``eval_loops`` in eval mode)
        self.loops: int | None = None

    def active_loops(self, loops: int | None = None) -> int:
        """K for the next forward: ``loops``, else the override, else the config's for the mode."""
        if loops is not None:
            return check_loops(loops)
        if self.loops is not None:
            return self.loops
        cfg = self.config
        return cfg.eval_loops if not self.training and cfg.eval_loops is not None else cfg.loops

    def plan(self, loops: int) -> list[tuple[int, bool]]:
        """(block index, starts a loop iteration) for every block call, in order."""
        cfg = self.config
        body = range(cfg.pre_depth, cfg.pre_depth + cfg.loop_depth)
        calls = [(i, False) for i in range(cfg.pre_depth)]
        for _ in range(loops):
            calls += [(i, i == body.start) for i in body]
        return calls + [(i, False) for i in range(body.stop, cfg.depth)]

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DecodeCache | None = None,
        loops: int | None = None,
    ) -> torch.Tensor:
        plan = self.plan(self.active_loops(loops))
        offset = cache.length if cache is not None else 0
        self.check_input(input_ids, offset)
        if cache is not None and len(cache.layers) != len(plan):
            raise InputError(
                f"cache: {len(cache.layers)} entries for {len(plan)} block calls; make it with "
                "model.new_cache() under the same loops and train/eval mode"
            )
        x, rotary = self.embed_input(input_ids, attention_mask, position_ids, offset)
        injected = None
        for call, (index, starts) in enumerate(plan):
            if starts and self.config.input_injection:
                if injected is None:
                    injected = x  # p: iteration 1 reads it as it is
                else:
                    x = x + injected
            x = self.call_block(index, x, cache, call, attention_mask, rotary)
        if cache is not None:
            cache.length = offset + input_ids.size(1)
        return self.finish(x)


class _LoopControl:
    """``model.loops``: K of the next forward (read), or a run-time override (write; None resets)."""

    transformer: LoopedStack

    @property
    def loops(self) -> int:
        return self.transformer.active_loops()

    @loops.setter
    def loops(self, value: int | None) -> None:
        self.transformer.loops = None if value is None else check_loops(value)


@MODEL.register(LoopedConfig)
class LoopedEncoder(_LoopControl, HeadEncoder):
    """``encode(ids, mask) -> (B, T, D)``; ``model(ids, mask)`` applies the head (as ``encoder``)."""

    paper = PAPER

    def __init__(self, cfg: LoopedConfig):
        super().__init__(cfg, LoopedStack(cfg, causal=False))

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        loops: int | None = None,
    ) -> torch.Tensor:
        """As ``encoder``; ``loops``: K of this call (None: ``model.loops``)."""
        check_mask_support(self.config.attention, attention_mask)
        return self.transformer(input_ids, attention_mask=attention_mask, loops=loops)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """As ``encoder``; keyword ``loops``: K of this call (see :meth:`encode`)."""
        return apply_head(self, input_ids, attention_mask, **kwargs)


@MODEL.register(LoopedLMConfig)
class LoopedLM(_LoopControl, CausalLM):
    """``model(input_ids) -> logits``; ``model.generate(prompt_ids, ...)`` decodes (K:
    ``model.loops``) with a KV cache of one entry per (iteration, block) call."""

    paper = PAPER

    def __init__(self, cfg: LoopedLMConfig):
        super().__init__(cfg, LoopedStack(cfg, causal=True))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """As ``decoder_lm`` (keywords ``position_ids``, ``cache``, ``last_only``); keyword
        ``loops``: K of this call (None: ``model.loops``)."""
        return self.lm_forward(input_ids, attention_mask, **kwargs)

    def new_cache(self, loops: int | None = None) -> DecodeCache:
        """A cache for the K of ``loops`` (None: the K the next forward runs)."""
        return DecodeCache(self.config.calls(self.transformer.active_loops(loops)))
