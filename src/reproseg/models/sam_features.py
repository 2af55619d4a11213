"""A bounded store of SAM image-encoder features, for stages that see the same pictures again
with the encoder frozen (SegAnswer's stages and evaluations, the default's SAM 2.1 warm-up)."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..bounded_cache import BoundedLRU


def _maps_bytes(maps: list[torch.Tensor]) -> int:
    return sum(m.numel() * m.element_size() for m in maps)


class SamFeatureCache(BoundedLRU[list[torch.Tensor]]):
    """Least-recently-used store of per-picture SAM image-encoder features, keyed by the pixels
    (`key`) or by any other bytes, holding at most `max_mb` megabytes of tensors."""

    def __init__(self, max_mb: float):
        super().__init__(int(max_mb * 2**20), _maps_bytes)

    @staticmethod
    def key(rgb: np.ndarray) -> bytes:
        """A digest of the picture (its size and every pixel)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray(rgb.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(rgb).tobytes())
        return h.digest()

    def put(self, key: bytes, maps: list[torch.Tensor]) -> None:
        # a slice of a batch would keep the whole batch's storage alive: store own copies
        if _maps_bytes(maps) <= self.max_bytes:
            super().put(key, [m.clone() for m in maps])
