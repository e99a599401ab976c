"""Top-k hard attention: the "selective hard attention" of "AxFormer: Accuracy-driven Approximation of
Transformers for Faster, Smaller and more Accurate NLP Models", Amrit Nagarajan, Sanchari Sen, Jacob R.
Stevens, Anand Raghunathan, 2020, arXiv:2010.03688.

Each query keeps only its ``top_k`` largest scores; the others are set to -inf before the softmax, so
every query aggregates at most ``top_k`` values (``top_k = 1`` is argmax attention, ``top_k >= T`` is
plain softmax). Everything else is softmax attention: grouped-query heads, causal and padding masks,
KV-cache decoding. Masked keys are -inf before the selection, so they are never chosen over real ones.
The scores are computed explicitly (:func:`formerlab.ops.scores.explicit_attention`).

Differences from the paper: AxFormer applies hard attention only in the layers where a greedy search on
validation accuracy allows it ("selective"); here the kind applies to every layer of a model it is
configured for, and the layer search belongs to the pruning procedure, not to the kernel. Scores tied
with the k-th largest are all kept, so a row may keep more than ``top_k`` keys on exact ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ...config import join, param
from ...errors import ConfigError
from ...ops.scores import keep_top_k, softmax_probs
from ...registry import ATTENTION
from .softmax import SoftmaxAttention, SoftmaxAttentionConfig


def _top_k_softmax(scores, *, k: int):
    return softmax_probs(keep_top_k(scores, k))


@dataclass(kw_only=True)
class HardTopKConfig(SoftmaxAttentionConfig):
    kind = "hard_topk"
    top_k: int = param(8, doc="scores kept per query (the rest are masked before the softmax)")

    def validate(self, path: str = "") -> None:
        super().validate(path)
        if self.top_k < 1:
            raise ConfigError(f"{join(path, 'top_k')}: invalid value {self.top_k}; allowed: >= 1")


@ATTENTION.register(HardTopKConfig)
class HardTopKAttention(SoftmaxAttention):
    """softmax(top-k of Q K^T / sqrt(d), the rest -inf) V per head."""

    paper = (
        "Nagarajan, Sen, Stevens, Raghunathan, 2020, AxFormer: Accuracy-driven Approximation of "
        "Transformers for Faster, Smaller and more Accurate NLP Models, arXiv:2010.03688"
    )

    def __init__(self, cfg: HardTopKConfig, **dims):
        super().__init__(cfg, **dims)
        self.probs = partial(_top_k_softmax, k=cfg.top_k)
