"""A least-recently-used map bounded by the bytes its values hold, for caches that must keep a
stage's memory bounded whatever the data size (SAM encoder features, decoded training views)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class BoundedLRU(Generic[V]):
    """At most `max_bytes` of values (each measured by `size_of`); the least recently used go
    first. A value larger than the whole bound is not kept."""

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]):
        self.max_bytes = int(max_bytes)
        self.size_of = size_of
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> V | None:
        got = self._items.get(key)
        if got is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return got

    def put(self, key: Hashable, value: V) -> None:
        size = self.size_of(value)
        if size > self.max_bytes:
            return
        if key in self._items:
            self.nbytes -= self.size_of(self._items.pop(key))
        self._items[key] = value
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= self.size_of(old)

    def __len__(self) -> int:
        return len(self._items)
