"""Leader election on a coordination.k8s.io/v1 Lease, so only one operator replica acts.

Clocks of different replicas need not agree. As client-go does, a candidate never compares the
holder's ``renewTime`` with its own clock: it remembers the Lease spec it last saw and the moment
(on its own monotonic clock) it saw that spec change, and takes the Lease only when the spec has
not changed for ``leaseDurationSeconds`` of local time, or when nobody holds it. The wall clock
only fills in ``acquireTime`` and ``renewTime`` for people reading the Lease.

Every write carries the Lease's resourceVersion, so two candidates racing for it cannot both win
(the loser gets 409 Conflict). The leader renews every ``retry_period`` and counts as leader only
until ``renew_deadline`` after the start of its last successful renewal: another candidate saw
that renewal no earlier than it started, so it waits at least ``lease_duration`` from then, which
is why ``renew_deadline`` must be shorter than ``lease_duration``. On a clean shutdown the leader
releases the Lease so a standby takes over without waiting for it to expire.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import LEASES

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def format_micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LostLeadership(Exception):
    """The lease could not be renewed in time or was taken: another replica may be acting now."""


class LeaderElector:
    """One candidate for one Lease.

    ``wall_clock`` stamps ``acquireTime``/``renewTime``; ``monotonic`` measures every interval
    (lease expiry, renew deadline). Both are parameters so tests can skew them.
    """

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        wall_clock: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "leader election needs 0 < retry_period < renew_deadline < lease_duration, got "
                f"{retry_period}, {renew_deadline}, {lease_duration}"
            )
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.wall_clock = wall_clock
        self.monotonic = monotonic
        self._observed: dict[str, Any] | None = None  # the Lease spec as last read or written
        self._observed_at = 0.0  # monotonic time the spec was last seen to change
        self._renewed_at: float | None = None  # start of the last successful take or renewal
        self._renewing: anyio.CancelScope | None = None  # keep_renewing's loop, for release()
        self._released = False  # release() was called: keep_renewing ends instead of renewing

    @property
    def is_leader(self) -> bool:
        """True while the last successful take or renewal started less than
        ``renew_deadline`` ago (and leadership was not lost or released since)."""
        renewed_at = self._renewed_at
        return renewed_at is not None and self.monotonic() - renewed_at < self.renew_deadline

    def _observe(self, spec: dict[str, Any]) -> None:
        if spec != self._observed:
            self._observed = copy.deepcopy(spec)
            self._observed_at = self.monotonic()

    def _observed_holder(self) -> str:
        return str((self._observed or {}).get("holderIdentity") or "")

    def _held_by_another(self) -> bool:
        """Someone else holds the Lease and it changed within its duration, by our clock."""
        holder = self._observed_holder()
        if not holder or holder == self.identity:
            return False
        assert self._observed is not None
        duration = float(self._observed.get("leaseDurationSeconds") or self.lease_duration)
        return self.monotonic() - self._observed_at <= duration

    def _spec(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = format_micro_time(self.wall_clock())
        spec: dict[str, Any] = dict(previous or {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            transitions = int(spec.get("leaseTransitions") or 0)
            spec["leaseTransitions"] = transitions + 1 if previous is not None else 0
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = math.ceil(self.lease_duration)
        spec["renewTime"] = now
        return spec

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True if this candidate holds the lease afterwards."""
        started = self.monotonic()
        try:
            lease = await self.client.get(LEASES, self.namespace, self.name)
        except ApiError as exc:
            if not exc.not_found:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(None),
            }
            try:
                created = await self.client.create(LEASES, body)
            except ApiError as create_error:
                if create_error.conflict:  # 409 AlreadyExists: someone else was first
                    return False
                raise
            self._observe(created.get("spec") or {})
            self._renewed_at = started
            return True
        spec = lease.get("spec") or {}
        self._observe(spec)
        if self._held_by_another():
            return False
        lease["spec"] = self._spec(spec)
        try:
            replaced = await self.client.replace(LEASES, lease)
        except ApiError as exc:
            if exc.conflict:
                return False
            raise
        self._observe(replaced.get("spec") or {})
        self._renewed_at = started
        return True

    async def acquire(self) -> None:
        """Wait until this candidate is the leader."""
        self._released = False
        while True:
            try:
                if await self.try_acquire_or_renew() and self.is_leader:
                    log.info("leader election: %s acquired lease %s", self.identity, self.name)
                    return
            except Exception as exc:
                log.warning("leader election: %r", exc)
            await anyio.sleep(self.retry_period)

    async def keep_renewing(self) -> None:
        """Renew until cancelled or :meth:`release` is called. Raises :class:`LostLeadership`
        once the renew deadline passes without a successful renewal (an attempt still pending
        then is abandoned) or another candidate is seen holding the lease."""
        with anyio.CancelScope() as self._renewing:
            while True:
                await anyio.sleep(self.retry_period)
                if self._released:
                    # The cancellation may not have reached this task yet: its sleep had
                    # ended and it was waiting to run when release() was called (which
                    # cleared the lease time itself).
                    return
                renewed_at = self._renewed_at
                if renewed_at is None:
                    raise LostLeadership(f"lease {self.name} is not held")
                renewed = False
                with anyio.move_on_after(
                    max(renewed_at + self.renew_deadline - self.monotonic(), 0)
                ):
                    try:
                        renewed = await self.try_acquire_or_renew()
                    except Exception as exc:
                        log.warning("leader election: renew failed: %r", exc)
                if self._released:
                    # A renewal answered as release() began: it must not count.
                    self._renewed_at = None
                    return
                if renewed:
                    continue
                holder = self._observed_holder()
                if holder and holder != self.identity:
                    self._renewed_at = None
                    raise LostLeadership(f"lease {self.name} is held by {holder}")
                if not self.is_leader:
                    self._renewed_at = None
                    raise LostLeadership(f"could not renew lease {self.name} in time")

    async def release(self) -> None:
        """Give the lease up (best effort) so a standby need not wait for it to expire; stops
        :meth:`keep_renewing` first so it cannot take the freed lease again."""
        self._released = True
        if self._renewing is not None:
            self._renewing.cancel()
        if not self.is_leader:
            return
        self._renewed_at = None
        try:
            lease = await self.client.get(LEASES, self.namespace, self.name)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") == self.identity:
                spec["holderIdentity"] = ""
                spec["leaseDurationSeconds"] = 1
                lease["spec"] = spec
                await self.client.replace(LEASES, lease)
        except Exception as exc:
            log.warning("leader election: release failed: %r", exc)
