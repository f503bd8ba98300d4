"""The per-client token bucket: burst, then the sustained rate, each client on its own."""

from __future__ import annotations

import pytest

from metal3.agentapi.ratelimit import RateLimit, RateLimiter, retry_after_header


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(rate=2.0, burst=3), clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)  # one token at 2/s: half a second away
    clock.now += 0.25
    assert limiter.acquire("a") == pytest.approx(0.25)  # refused requests take nothing
    clock.now += 0.25
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)
    clock.now += 60  # refills up to the burst, not beyond
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") > 0


def test_clients_have_their_own_buckets_and_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(rate=1.0, burst=1), clock=clock, max_clients=3)
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0  # a's exhaustion does not touch b
    for client in ("c", "d", "e"):
        limiter.acquire(client)
    assert len(limiter) == 3


def test_zero_rate_means_no_limit_and_bad_burst_is_refused() -> None:
    limiter = RateLimiter(RateLimit(rate=0, burst=1))
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))
    with pytest.raises(ValueError, match="burst"):
        RateLimit(rate=1, burst=0)


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (30.0, "30")])
def test_retry_after_rounds_up_to_whole_seconds(wait: float, header: str) -> None:
    assert retry_after_header(wait) == header
