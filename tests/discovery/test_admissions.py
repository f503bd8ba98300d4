"""Admissions: one per physical system (system UUID, serial or a shared MAC), a cap on new
systems per minute with the wait until the next, and discovery tokens that expire."""

from __future__ import annotations

import pytest

from metal3.discovery.admissions import MAX_TOKENS, Admissions, CapReachedError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mac(n: int) -> str:
    return f"02:00:00:00:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}"


def test_one_admission_per_system_whatever_identifies_it() -> None:
    admissions = Admissions(5, clock=Clock())
    first, _ = admissions.admit("u-1", None, [mac(1)])
    assert admissions.admit("u-1", None, [mac(2)])[0] is first  # same UUID, other MACs
    assert admissions.admit(None, None, [mac(2), mac(9)])[0] is first  # a MAC seen before
    assert admissions.admit(None, "SN-1", [mac(1)])[0] is first  # serial joins the admission
    assert admissions.admit(None, "SN-1", [mac(50)])[0] is first  # found by serial alone
    other, _ = admissions.admit("u-2", "SN-2", [mac(3)])
    assert other is not first
    assert admissions.admitted == 2 and len(admissions) == 2
    assert first.macs == {mac(1), mac(2), mac(9), mac(50)}


def test_cap_per_minute_then_retry_after_then_room_again() -> None:
    clock = Clock()
    admissions = Admissions(3, clock=clock)
    for n in range(3):
        admissions.admit(None, None, [mac(n)])
        clock.now += 10
    with pytest.raises(CapReachedError) as refused:
        admissions.admit(None, None, [mac(99)])
    assert refused.value.retry_after == pytest.approx(30.0)
    admissions.admit(None, None, [mac(0)])  # an admitted system is not a new one
    assert admissions.capped == 1
    clock.now += 30.0  # the first admission leaves the window
    admissions.admit(None, None, [mac(99)])
    with pytest.raises(CapReachedError):
        admissions.admit(None, None, [mac(100)])


def test_tokens_are_per_admission_newest_kept_and_expire() -> None:
    clock = Clock()
    admissions = Admissions(2, ttl=100.0, clock=clock)
    admission, token = admissions.admit("u-1", None, [mac(1)])
    assert admissions.by_token(token) is admission
    later = [admissions.admit("u-1", None, [mac(1)])[1] for _ in range(MAX_TOKENS)]
    assert admissions.by_token(token) is None  # replaced by the newer ones
    assert all(admissions.by_token(t) is admission for t in later)
    assert admissions.by_token("x" * 43) is None and admissions.by_token("short") is None
    clock.now += 100.0
    assert admissions.by_token(later[-1]) is None  # expired with its admission
    assert len(admissions) == 0
    assert admissions.find("u-1", None, [mac(1)]) is None


def test_an_admission_remembers_a_bounded_number_of_macs() -> None:
    admissions = Admissions(1, clock=Clock())
    admission, _ = admissions.admit(None, None, [mac(n) for n in range(1000)])
    assert len(admission.macs) == 256
    assert admissions.admit(None, None, [mac(5000), mac(0)])[0] is admission


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admissions(0)
