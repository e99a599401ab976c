"""LSH attention from "Reformer: The Efficient Transformer", Kitaev, Kaiser, Levskaya, 2020,
arXiv:2001.04451.

Shared-QK attention (keys are the unit-normalised queries) restricted by locality-sensitive hashing:
random rotations hash each key into one of ``n_buckets`` buckets, ``h(x) = argmax([xR; -xR])``; the
sequence is sorted by (bucket, position) and cut into chunks of ``bucket_size`` tokens; each chunk
attends to itself and the previous chunk (bidirectional: the next one too), within the query's own
bucket. A token does not attend to itself unless it has no other key. ``n_hashes`` rounds with
independent rotations are combined by their logsumexp normalisers into softmax attention over the
union of the rounds' key sets. Memory is O(n_hashes * T * bucket_size): no T x T matrix is ever
formed (kernel and its O(T^2) reference twin: ``formerlab.ops.lsh``).

Differences from the paper: (1) a query sees the ``bucket_size`` nearest same-bucket keys on each
allowed side (counted within its bucket) instead of whatever the chunk boundaries happen to cut;
this is the paper's chunk window made independent of how many tokens of other buckets precede, which
makes the causal form truly causal (later tokens cannot shift which earlier keys a query sees) and
padded batches exactly equal to unpadded sequences. (2) Keys found in several rounds are counted
once (the paper's duplicate correction, applied exactly). (3) The rotations are drawn once at
construction and saved with the model (a fixed hash per trained model, so training and evaluation
agree) rather than redrawn every forward pass. (4) Bidirectional queries also look one chunk ahead
(the paper looks one back only), so each side sees up to ``bucket_size`` same-bucket keys. (5)
``n_buckets`` defaults to ``2 * ceil(max_seq_len / bucket_size)`` (the paper's average of
bucket_size / 2 tokens per bucket at full length). (6) Above ``2 * bucket_size`` buckets the hash is
factorized by default (``hash_factors``): two independent rotation hashes into b1 and b2 buckets,
combined into b1 * b2 buckets. The paper's single hash needs n_buckets / 2 rotations, so hashing
alone costs T * n_buckets / 2 * head_dim, which grows as T^2 when n_buckets follows T; two factors
need about sqrt(n_buckets) rotations. Hugging Face's port of the authors' code accepts the same
factorization (``num_buckets`` as a list) and switches to it for long sequences. (A model saved
before ``hash_factors`` existed, with more than ``2 * bucket_size`` buckets, needs
``hash_factors: 1`` in its config to load.) No reversible layers or chunked feed-forwards here (memory techniques of the
model, not of the attention), and no KV cache.
Scores are scaled by 1/sqrt(head_dim); rotary positions, when configured, rotate queries and keys
alike before hashing (rotations keep norms, so keys stay the normalised queries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ...config import join, param
from ...errors import ConfigError, InputError
from ...ops.lsh import lsh_attention, lsh_buckets
from ...registry import ATTENTION
from ..linear import make_fused_linear
from .base import AttentionConfig
from .projected import ProjectedAttention


@dataclass(kw_only=True)
class ReformerConfig(AttentionConfig):
    kind = "reformer"
    n_hashes: int = param(2, doc="hash rounds combined into one attention (paper: 1-8)")
    bucket_size: int = param(
        64, doc="chunk length over the bucket-sorted sequence: same-bucket keys seen per side"
    )
    n_buckets: int | None = param(
        None, doc="hash buckets, 1 or even (null: 2 * ceil(max_seq_len / bucket_size))"
    )
    hash_factors: int | None = param(
        None,
        doc="1: one hash over n_buckets / 2 rotations; 2: two hashes whose buckets multiply, "
        "about sqrt(n_buckets) rotations (null: 2 when n_buckets > 2 * bucket_size)",
    )

    def validate(self, path: str = "") -> None:
        super().validate(path)
        for name in ("n_hashes", "bucket_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{join(path, name)}: invalid value {getattr(self, name)}; allowed: >= 1"
                )
        n = self.n_buckets
        if n is not None and (n < 1 or (n > 1 and n % 2)):
            raise ConfigError(
                f"{join(path, 'n_buckets')}: invalid value {n}; allowed: null, 1 or an even "
                "number >= 2"
            )

        if self.hash_factors not in (None, 1, 2):
            raise ConfigError(
                f"{join(path, 'hash_factors')}: invalid value {self.hash_factors}; allowed: "
                "null, 1 or 2"
            )

    def buckets_for(self, max_seq_len: int) -> int:
        if self.n_buckets is not None:
            return self.n_buckets
        return 2 * math.ceil(max_seq_len / self.bucket_size)

    def factors_for(self, max_seq_len: int) -> tuple[int, ...]:
        """The bucket count of each hash: ``(n_buckets,)``, or two even counts ``b1 = 2 *
        ceil(sqrt(n) / 2)`` and ``b2 = 2 * ceil(n / (2 * b1))`` whose product is at least ``n``."""
        n = self.buckets_for(max_seq_len)
        factors = self.hash_factors
        if factors is None:
            factors = 2 if n > 2 * self.bucket_size else 1
        if factors == 1 or n == 1:
            return (n,)
        first = 2 * math.ceil(math.sqrt(n) / 2)
        return first, 2 * math.ceil(n / (2 * first))


@ATTENTION.register(ReformerConfig)
class ReformerAttention(ProjectedAttention):
    """Shared-QK LSH attention over bucket-sorted chunks, several hash rounds, no KV cache."""

    paper = "Kitaev et al., 2020, Reformer: The Efficient Transformer, arXiv:2001.04451"
    supports_causal = True
    supports_padding_mask = True

    def __init__(self, cfg: ReformerConfig, **dims):
        super().__init__(cfg, **dims)
        if self.cross:
            raise ConfigError(f"kind: attention {cfg.kind!r} lacks supports_cross")
        width = self.num_heads * self.head_dim
        self.qkv_proj = make_fused_linear(
            dims["linear"], dims["dim"], [width, width], bias=cfg.bias
        )  # q, v
        self.factors = cfg.factors_for(self.max_seq_len)
        columns = sum(n // 2 for n in self.factors)
        rotations = torch.randn(cfg.n_hashes, self.head_dim, columns)
        self.register_buffer("rotations", rotations)  # (R, hd, columns), saved with the model

    def project(self, x, context, cache, key_mask=None):
        """Queries and values; the keys are the queries (normalised in :meth:`attend`)."""
        q, v = self.qkv_proj(x).chunk(2, dim=-1)
        q = self._heads(q, self.num_heads)  # (B, nh, T, hd)
        return q, q, self._heads(v, self.num_heads)

    def attend(self, q, k, v, *, key_mask, cache):
        if cache is not None:
            raise InputError("cache: attention 'reformer' declares no KV cache; decode without one")
        keys = F.normalize(k, dim=-1)  # shared QK: k_j = q_j / |q_j|
        return lsh_attention(
            q,
            keys,
            v,
            lsh_buckets(keys, self.rotations, self.factors),  # (B, nh, R, T)
            window=self.config.bucket_size,
            causal=self.causal,
            key_mask=key_mask,
            dropout_p=self.config.dropout if self.training else 0.0,
        )  # (B, nh, T, hd)
