"""Deadlines: many time limits kept by one timer, instead of a timer object per job."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """Calls `on_expired(key)` once a key's deadline (the loop's clock) has passed, unless the
    key was discarded first.

    One timer, set for the earliest deadline, serves every key: adding a key whose deadline
    is later than that (the usual case, when keys come in order and share a time limit) costs
    a heap push. Discarded keys leave their heap entries behind until they reach the top or
    outnumber the live ones.
    """

    def __init__(self, on_expired: Callable[[K], None]) -> None:
        self._on_expired = on_expired
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, float] = {}
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        return len(self._live)

    def add(self, key: K, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + timeout_s
        self._live[key] = at
        heapq.heappush(self._heap, (at, next(self._order), key))
        if at < self._timer_at:
            self._arm(loop, at)

    def discard(self, key: K) -> None:
        if self._live.pop(key, None) is None:
            return
        if len(self._heap) > 64 + 4 * len(self._live):
            self._heap = [(at, n, k) for at, n, k in self._heap if self._live.get(k) == at]
            heapq.heapify(self._heap)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        self._heap.clear()
        self._live.clear()

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired: list[K] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            if self._live.get(key) == at:
                del self._live[key]
                expired.append(key)
        while heap and self._live.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # discarded
        if heap:
            self._arm(loop, heap[0][0])
        for key in expired:
            self._on_expired(key)
