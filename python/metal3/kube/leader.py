"""Leader election on a coordination.k8s.io/v1 Lease, so only one operator replica acts.

The candidate takes the Lease when it is free or its holder stopped renewing it for longer than
``leaseDurationSeconds``; every write carries the Lease's resourceVersion, so two candidates
racing for it cannot both win (the loser gets 409 Conflict). The leader renews every
``retry_period``; if it cannot renew within ``renew_deadline`` it has lost the lease and must
stop acting at once. On a clean shutdown the leader releases the lease so a standby takes over
without waiting for it to expire.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import LEASES

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def format_micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: str) -> datetime:
    text = text.replace("Z", "+00:00")
    return datetime.fromisoformat(text)


class LostLeadership(Exception):
    """The lease could not be renewed in time: another replica may be acting now."""


class LeaderElector:
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
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.is_leader = False

    def _spec(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = format_micro_time(_now())
        spec: dict[str, Any] = dict(previous or {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            transitions = int(spec.get("leaseTransitions") or 0)
            spec["leaseTransitions"] = transitions + 1 if previous is not None else 0
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = int(self.lease_duration)
        spec["renewTime"] = now
        return spec

    def _expired(self, spec: dict[str, Any]) -> bool:
        holder = spec.get("holderIdentity")
        renew = spec.get("renewTime")
        if not holder or not renew:
            return True
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        return parse_micro_time(renew) + timedelta(seconds=duration) < _now()

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True if this candidate holds the lease afterwards."""
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
                await self.client.create(LEASES, body)
            except ApiError as create_error:
                if create_error.conflict:  # 409 AlreadyExists: someone else was first
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity and not self._expired(spec):
            return False
        lease["spec"] = self._spec(spec)
        try:
            await self.client.replace(LEASES, lease)
        except ApiError as exc:
            if exc.conflict:
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Wait until this candidate is the leader."""
        while True:
            try:
                if await self.try_acquire_or_renew():
                    self.is_leader = True
                    log.info("leader election: %s acquired lease %s", self.identity, self.name)
                    return
            except Exception as exc:
                log.warning("leader election: %r", exc)
            await anyio.sleep(self.retry_period)

    async def keep_renewing(self) -> None:
        """Renew until cancelled; raises :class:`LostLeadership` when a renewal deadline passes."""
        last_renewed = anyio.current_time()
        while True:
            await anyio.sleep(self.retry_period)
            try:
                renewed = await self.try_acquire_or_renew()
            except Exception as exc:
                log.warning("leader election: renew failed: %r", exc)
                renewed = False
            if renewed:
                last_renewed = anyio.current_time()
            elif anyio.current_time() - last_renewed > self.renew_deadline:
                self.is_leader = False
                raise LostLeadership(f"could not renew lease {self.name} in time")

    async def release(self) -> None:
        """Give the lease up (best effort) so a standby need not wait for it to expire."""
        if not self.is_leader:
            return
        self.is_leader = False
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
