"""A bounded store of SAM image-encoder features, for stages that see the same pictures again
with the encoder frozen (SegAnswer's stages and evaluations, the default's SAM 2.1 warm-up)."""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch


class SamFeatureCache:
    """Least-recently-used store of per-picture SAM image-encoder features, keyed by the pixels,
    holding at most `max_mb` megabytes of tensors."""

    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self._items: OrderedDict[bytes, list[torch.Tensor]] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def key(rgb: np.ndarray) -> bytes:
        """A digest of the picture (its size and every pixel)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray(rgb.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(rgb).tobytes())
        return h.digest()

    @staticmethod
    def _size(maps: list[torch.Tensor]) -> int:
        return sum(m.numel() * m.element_size() for m in maps)

    def get(self, key: bytes) -> list[torch.Tensor] | None:
        got = self._items.get(key)
        if got is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return got

    def put(self, key: bytes, maps: list[torch.Tensor]) -> None:
        size = self._size(maps)
        if size > self.max_bytes:
            return
        if key in self._items:
            self.nbytes -= self._size(self._items.pop(key))
        # a slice of a batch would keep the whole batch's storage alive: store own copies
        self._items[key] = [m.clone() for m in maps]
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= self._size(old)

    def __len__(self) -> int:
        return len(self._items)
