"""The exception contract between the state machine and a provisioner.

A provisioner call that raises must not cost the host its status: the reconcile would end in
the exception, nothing would be written, and the host would be retried with no word of why.
`GuardedProvisioner` wraps a provisioner so that every exception (not cancellation) from a
call becomes a failed `Result` whose message names the operation and the exception; the state
machine then records it like any other failure (error type of the step, error count, backoff,
Warning Event) and the reconciler writes the status. The traceback goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from metal3.api.baremetalhost import BareMetalHost
from metal3.provisioner.base import (
    InspectionResult,
    ManagementAccessData,
    PowerState,
    PrepareData,
    ProvisionData,
    Provisioner,
    ProvisionerFactory,
    Result,
    failed,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def error_message(operation: str, exc: BaseException) -> str:
    """What the host's status says about an exception from a provisioner call."""
    detail = str(exc).strip() or "(no message)"
    return f"provisioner error in {operation}: {type(exc).__name__}: {detail}"


class GuardedProvisioner:
    """A provisioner whose calls never raise (but for cancellation): see the module doc."""

    def __init__(self, inner: Provisioner, host: str) -> None:
        self.inner = inner
        self.host = host

    def _log(self, operation: str) -> None:
        log.exception("%s: the provisioner raised in %s", self.host, operation)

    async def _result(self, operation: str, call: Callable[[], Awaitable[Result]]) -> Result:
        try:
            return await call()
        except Exception as exc:
            self._log(operation)
            return failed(error_message(operation, exc))

    @property
    def provisioning_id(self) -> str | None:
        try:
            return self.inner.provisioning_id
        except Exception:
            self._log("provisioning_id")
            return None

    async def register(self, data: ManagementAccessData, *, force: bool) -> Result:
        return await self._result("register", lambda: self.inner.register(data, force=force))

    async def inspect(self, *, force: bool) -> InspectionResult:
        try:
            return await self.inner.inspect(force=force)
        except Exception as exc:
            self._log("inspect")
            return InspectionResult(failed(error_message("inspect", exc)))

    async def prepare(self, data: PrepareData, *, force: bool) -> Result:
        return await self._result("prepare", lambda: self.inner.prepare(data, force=force))

    async def adopt(self, data: ProvisionData) -> Result:
        return await self._result("adopt", lambda: self.inner.adopt(data))

    async def provision(self, data: ProvisionData) -> Result:
        return await self._result("provision", lambda: self.inner.provision(data))

    async def deprovision(self, *, automated_cleaning: bool) -> Result:
        return await self._result(
            "deprovision", lambda: self.inner.deprovision(automated_cleaning=automated_cleaning)
        )

    async def power_on(self, *, force: bool) -> Result:
        return await self._result("power on", lambda: self.inner.power_on(force=force))

    async def power_off(self, *, hard: bool) -> Result:
        return await self._result("power off", lambda: self.inner.power_off(hard=hard))

    async def power_state(self) -> PowerState:
        """Unknown (None) when reading it raises: the power operation that follows, if any,
        reports its own error."""
        try:
            return await self.inner.power_state()
        except Exception:
            self._log("power state")
            return PowerState(None)

    async def detach(self, *, force: bool) -> Result:
        return await self._result("detach", lambda: self.inner.detach(force=force))

    async def delete(self) -> Result:
        return await self._result("delete", lambda: self.inner.delete())


class BrokenProvisioner:
    """Stands in when the factory itself raised making the provisioner: every operation fails
    with that error, so it lands in the host's status like any other."""

    def __init__(self, message: str) -> None:
        self.message = message

    @property
    def provisioning_id(self) -> str | None:
        return None

    async def register(self, data: ManagementAccessData, *, force: bool) -> Result:
        return failed(self.message)

    async def inspect(self, *, force: bool) -> InspectionResult:
        return InspectionResult(failed(self.message))

    async def prepare(self, data: PrepareData, *, force: bool) -> Result:
        return failed(self.message)

    async def adopt(self, data: ProvisionData) -> Result:
        return failed(self.message)

    async def provision(self, data: ProvisionData) -> Result:
        return failed(self.message)

    async def deprovision(self, *, automated_cleaning: bool) -> Result:
        return failed(self.message)

    async def power_on(self, *, force: bool) -> Result:
        return failed(self.message)

    async def power_off(self, *, hard: bool) -> Result:
        return failed(self.message)

    async def power_state(self) -> PowerState:
        return PowerState(None)

    async def detach(self, *, force: bool) -> Result:
        return failed(self.message)

    async def delete(self) -> Result:
        return failed(self.message)


def guarded_provisioner(factory: ProvisionerFactory, host: BareMetalHost) -> GuardedProvisioner:
    """The host's provisioner from ``factory``, under the exception contract."""
    metadata = host.metadata
    name = f"{metadata.namespace}/{metadata.name}" if metadata else "?"
    try:
        inner: Provisioner = factory.for_host(host)
    except Exception as exc:
        log.exception("%s: the provisioner factory raised", name)
        inner = BrokenProvisioner(error_message("making the provisioner", exc))
    return GuardedProvisioner(inner, name)
