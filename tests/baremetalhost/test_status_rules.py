"""Status rules on their own: the upstream error backoff."""

from __future__ import annotations

import pytest

from metal3.controllers.baremetalhost.status import MAX_BACKOFF_EXPONENT, error_backoff


@pytest.mark.parametrize("errors", [1, 2, 3, 5, 10, 11, 50])
def test_error_backoff_is_random_within_upstream_bounds(errors: int) -> None:
    n = min(errors, MAX_BACKOFF_EXPONENT)
    samples = [error_backoff(errors, unit=60.0) for _ in range(400)]
    assert all(2 ** (n - 1) * 60 <= s <= 2**n * 60 for s in samples)
    assert len({round(s, 6) for s in samples}) > 300, "jittered, not in lockstep"
    assert max(samples) - min(samples) > 2 ** (n - 1) * 60 * 0.8, "spread over the range"
