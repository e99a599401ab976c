"""Attention kernels run a few heads at a time when their temporaries would be large.

Each head's attention is independent, so a kernel may process blocks of heads and concatenate the
results. It pays on CPU for long sequences: glibc's malloc serves arrays above 32 MiB (its largest
dynamic mmap threshold) with fresh memory maps on every call, and first-touching those pages cost
about a fifth of the forward + backward time of LSH attention at 16K tokens. Splitting (rather
than slicing) keeps the backward cheap: a split's gradient is one concatenation, while every slice's
gradient would fill a zero array of the full size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: the largest temporary array one block of heads should allocate (bytes)
BLOCK_BYTES = 32 * 2**20


def heads_per_block(num_heads: int, bytes_per_head: int) -> int:
    """How many heads fit one block: at least 1, at most ``num_heads``."""
    return max(1, min(num_heads, BLOCK_BYTES // max(1, bytes_per_head)))


def over_head_blocks(
    fn: Callable[..., torch.Tensor],
    tensors: Sequence[torch.Tensor | None],
    num_heads: int,
    bytes_per_head: int,
) -> torch.Tensor:
    """``fn(*tensors)`` computed on blocks of heads (dim 1), concatenated along the heads.

    Tensors whose dim 1 is ``num_heads`` are split; others (None, or a size-1 head dim that
    broadcasts) are passed whole to every block."""
    size = heads_per_block(num_heads, bytes_per_head)
    if size >= num_heads:
        return fn(*tensors)
    blocks = -(-num_heads // size)
    parts = [
        t.split(size, dim=1) if t is not None and t.dim() > 1 and t.size(1) == num_heads
        else (t,) * blocks
        for t in tensors
    ]  # fmt: skip
    return torch.cat([fn(*block) for block in zip(*parts, strict=True)], dim=1)
