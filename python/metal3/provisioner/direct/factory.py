"""The direct provisioner's factory: per-host sessions and the background work of them all.

It outlives reconciles: it holds each host's `HostSession` (BMC connection, background calls,
timers), runs the background BMC calls in its own task group (`run`, for the operator's
lifetime), and frees a host's share when the host goes away (`forget`) and everything when the
operator stops. The IPMI worker processes are its own pool, so stopping it ends them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from metal3.api.baremetalhost import BareMetalHost
from metal3.bmc.address import BMCAddress, Driver
from metal3.bmc.interface import BMC
from metal3.bmc.ipmiworkers import WorkerPool
from metal3.provisioner.base import ProvisionerServices
from metal3.provisioner.direct.calls import BackgroundCalls
from metal3.provisioner.direct.provisioner import DirectProvisioner
from metal3.provisioner.direct.session import Access, HostSession, connect_bmc
from metal3.provisioner.direct.settings import DirectSettings

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 10.0  # seconds for logging out of BMCs when the operator stops
BMC_THREADS = 32  # worker threads for blocking BMC libraries (sushy), all hosts together


class DirectProvisionerFactory:
    def __init__(
        self, settings: DirectSettings | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or DirectSettings()
        self.clock = clock
        self.sessions: dict[str, HostSession] = {}
        self.services: ProvisionerServices | None = None
        self.ipmi_pool = WorkerPool(self.settings.ipmi_workers)
        self._group: TaskGroup | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    # --- the operator's side ---------------------------------------------------------------

    async def run(
        self,
        services: ProvisionerServices,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self._limiter = anyio.CapacityLimiter(BMC_THREADS)
        try:
            async with anyio.create_task_group() as group:
                self._group, self.services = group, services
                if not services.agent_api:
                    log.warning(
                        "the direct provisioner runs without the agent API (--agent-listen): "
                        "hosts can register and power, but not inspect, clean or provision"
                    )
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._group = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                await self.aclose()

    def services_or_fail(self) -> ProvisionerServices:
        if self.services is None:
            raise RuntimeError("the direct provisioner is not running (Operator.run starts it)")
        return self.services

    def for_host(self, host: BareMetalHost) -> DirectProvisioner:
        metadata = host.metadata
        assert metadata is not None
        uid = metadata.uid or f"{metadata.namespace}/{metadata.name}"
        session = self.sessions.get(uid)
        if session is None:
            namespace, name = metadata.namespace or "", metadata.name or ""
            session = self.sessions[uid] = HostSession(
                uid,
                namespace,
                name,
                BackgroundCalls(
                    self._spawn,
                    lambda: self._wake(namespace, name),
                    wait=self.settings.bmc_wait,
                    clock=self.clock,
                ),
            )
        return DirectProvisioner(self, host, session)

    def forget(self, uid: str) -> None:
        """Free what the host held: its background call, its BMC session (a Redfish
        logout, in the background) and, for IPMI, the idle worker processes (pyghmi keeps
        its sessions inside them; they start again on demand)."""
        session = self.sessions.pop(uid, None)
        if session is None:
            return
        session.calls.close()
        self._close_bmc(session.bmc, session.address)
        session.bmc = None
        session.registered = False
        log.info("%s/%s: provisioner session closed", session.namespace, session.name)

    # --- for the provisioners --------------------------------------------------------------

    def replace_bmc(self, session: HostSession, address: BMCAddress, access: Access) -> None:
        """Connect the session to the BMC ``access`` names, closing the previous one."""
        self._close_bmc(session.bmc, session.address)
        assert self._limiter is not None
        session.bmc = connect_bmc(
            address,
            access,
            limiter=self._limiter,
            pool=self.ipmi_pool,
            call_timeout=self.settings.bmc_call_timeout,
        )
        session.access, session.address, session.registered = access, address, False

    # --- plumbing ----------------------------------------------------------------------------

    def _wake(self, namespace: str, name: str) -> None:
        if self.services is not None:
            self.services.wake(namespace, name)

    def _spawn(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._group is None:
            raise RuntimeError("the direct provisioner is not running")
        self._group.start_soon(task)

    def _close_bmc(self, bmc: BMC | None, address: BMCAddress | None) -> None:
        if bmc is None:
            return
        if address is not None and address.driver is Driver.IPMI:
            self.ipmi_pool.close()
        if self._group is not None:
            self._group.start_soon(_close_quietly, bmc)

    async def aclose(self) -> None:
        """Close every BMC session and stop the IPMI workers."""
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            session.calls.close()
            if session.bmc is not None:
                await _close_quietly(session.bmc)
        self.ipmi_pool.close()


async def _close_quietly(bmc: BMC) -> None:
    try:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await bmc.aclose()
    except Exception:
        log.debug("closing the BMC session of %s failed", bmc.address, exc_info=True)
