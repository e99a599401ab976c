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

    def __getitem__(self, i: int) -> dict:
        return self.layers[i]
