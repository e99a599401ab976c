"""Decode-time state: a preallocated key/value buffer per layer, and the model-wide cache."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of the positions seen so far, in a buffer that grows by doubling."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, H, T, hd) keys/values; return all of them so far."""
        end = self.length + k.size(2)
        if self.k is None or end > self.k.size(2):
            self._grow(k, v, max(end, 2 * (self.k.size(2) if self.k is not None else 64)))
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def _grow(self, k: torch.Tensor, v: torch.Tensor, size: int) -> None:
        new_k = k.new_empty(*k.shape[:2], size, k.size(3))
        new_v = v.new_empty(*v.shape[:2], size, v.size(3))
        if self.k is not None:
            new_k[:, :, : self.length] = self.k[:, :, : self.length]
            new_v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = new_k, new_v


class DecodeCache:
    """One state dict per layer (each attention keeps what it needs) and the number of positions."""

    def __init__(self, num_layers: int) -> None:
        self.layers: list[dict] = [{} for _ in range(num_layers)]
        self.length = 0
        #: set for a static decode (fixed buffers, slot in a tensor): see :class:`StaticDecode`
        self.static: StaticDecode | None = None

    def __getitem__(self, i: int) -> dict:
        return self.layers[i]


class StaticDecode:
    """What every layer of a static decode step shares: the cache slot this step writes (a (1,) long
    tensor, the same for every row) and which slots hold real tokens ((B, max_len) bool).

    With fixed buffers and the slot held in a tensor, every decode step has the same shapes and no
    host synchronisation, so one compiled graph serves the whole generation."""

    def __init__(self, batch: int, max_len: int, device: torch.device) -> None:
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)


class StaticKVCache:
    """Keys and values in fixed (B, H, max_len, hd) buffers, written at ``StaticDecode.slot``."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, max_len: int) -> None:
        shape = (*k.shape[:2], max_len, k.size(3))
        self.k, self.v = k.new_zeros(shape), v.new_zeros(shape)
        self.load(k, v)

    def load(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Start over from (B, H, n, hd) prefix keys/values (the rest is masked by ``valid``)."""
        self.k[:, :, : k.size(2)] = k
        self.v[:, :, : v.size(2)] = v

    def write(self, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor):
        """Store one step's (B, H, 1, hd) keys/values at ``slot``; return the whole buffers."""
        self.k.index_copy_(2, slot, k)
        self.v.index_copy_(2, slot, v)
        return self.k, self.v
