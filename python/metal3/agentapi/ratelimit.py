"""A token bucket per client address: the agent API's defence against a runaway or hostile
client, generous enough that a fleet of well-behaved agents never meets it.

Each client may make ``burst`` requests at once and ``rate`` per second after that. A refused
request learns how long until the next one would be allowed (the ``Retry-After`` it is sent).
Memory is bounded: past ``max_clients`` buckets, the least recently used ones are forgotten
(a forgotten client starts again with a full bucket, which errs on the generous side).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    rate: float = 20.0  # requests per second, sustained; 0 or less: no limit
    burst: int = 40  # requests at once

    def __post_init__(self) -> None:
        if self.rate > 0 and self.burst < 1:
            raise ValueError("a rate limit's burst must be at least 1")


class RateLimiter:
    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def acquire(self, client: str) -> float:
        """Take one request from ``client``'s bucket: 0.0 if allowed, else seconds to wait."""
        rate, burst = self.limit.rate, float(self.limit.burst)
        if rate <= 0:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.pop(client, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[client] = (tokens, now)
            wait = (1.0 - tokens) / rate
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(wait: float) -> str:
    """``Retry-After`` is in whole seconds: round up, so a client that obeys is let through."""
    return str(max(1, math.ceil(wait)))
