"""A rate-limited work queue of object keys, as controllers consume them.

The guarantees are those of client-go's work queue, which level-triggered reconciling needs:

* a key waiting in the queue is there once, however often it is added (de-duplication);
* a key is never handed to two workers at once: added while being processed, it is queued
  again only when the worker calls :meth:`WorkQueue.done`;
* :meth:`add_after` delays an add (``requeue_after``); :meth:`add_rate_limited` delays it by a
  per-key exponential backoff that :meth:`forget` resets after a success.

It lives on one event loop; ``add`` is synchronous so informer callbacks can call it directly.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

import anyio

K = TypeVar("K", bound=Hashable)


class ShutDown(Exception):
    """The queue was shut down: workers should return."""


class WorkQueue(Generic[K]):
    def __init__(self, *, base_delay: float = 0.005, max_delay: float = 1000.0) -> None:
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._waiters: deque[anyio.Event] = deque()
        self._failures: dict[K, int] = {}
        self._base_delay = base_delay
        self._max_delay = max_delay
        # Delayed adds: (due time, tie-breaker, key); a key's earliest due time wins.
        self._delayed: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._counter = itertools.count()
        self._timer_wakeup = anyio.Event()
        self._shut_down = False

    # --- producers -----------------------------------------------------------------------

    def add(self, key: K) -> None:
        if self._shut_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # queued again by done()
        self._queue.append(key)
        self._wake_one()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        if self._shut_down:
            return
        due = anyio.current_time() + delay
        if self._due.get(key, math.inf) <= due:
            return
        self._due[key] = due
        heapq.heappush(self._delayed, (due, next(self._counter), key))
        self._timer_wakeup.set()

    def add_rate_limited(self, key: K) -> None:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self.add_after(key, self.backoff(failures))

    def backoff(self, failures: int) -> float:
        return float(min(self._base_delay * (2 ** min(failures, 40)), self._max_delay))

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    # --- consumers -----------------------------------------------------------------------

    async def get(self) -> K:
        """The next key to work on; raises :class:`ShutDown` once the queue is shut down."""
        while not self._queue:
            if self._shut_down:
                raise ShutDown
            waiter = anyio.Event()
            self._waiters.append(waiter)
            try:
                await waiter.wait()
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif self._queue:
                    self._wake_one()  # pass on the wake-up this cancelled task received
                raise
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake_one()

    # --- lifecycle -----------------------------------------------------------------------

    async def run_timers(self) -> None:
        """Move delayed keys into the queue when they fall due; run this in a task."""
        while not self._shut_down:
            now = anyio.current_time()
            while self._delayed and self._delayed[0][0] <= now:
                due, _, key = heapq.heappop(self._delayed)
                if self._due.get(key) == due:
                    del self._due[key]
                    self.add(key)
            self._timer_wakeup = anyio.Event()
            wait = self._delayed[0][0] - now if self._delayed else math.inf
            with anyio.move_on_after(wait):
                await self._timer_wakeup.wait()

    def shut_down(self) -> None:
        self._shut_down = True
        self._timer_wakeup.set()
        for waiter in self._waiters:
            waiter.set()

    @property
    def is_shut_down(self) -> bool:
        return self._shut_down

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def processing(self) -> int:
        return len(self._processing)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.is_set():
                waiter.set()
                return
