"""The direct provisioner asks a BMC for the power state no more than it must: on real BMCs a
Redfish GET takes up to seconds, and every finished provisioning asks the power state right
after the step that brought the host on. Counted from the real emulator's request log."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import anyio
import pytest

from metal3.api.baremetalhost import BareMetalHost
from metal3.bmc.credentials import Credentials
from metal3.bmc.emulators import SushyEmulator, fake_systems
from metal3.provisioner.base import ManagementAccessData, ProvisionerServices, Result
from metal3.provisioner.direct.factory import DirectProvisionerFactory
from metal3.provisioner.direct.provisioner import FIRST_POWER_POLL, FRESH_POWER_READ
from metal3.provisioner.direct.settings import DirectSettings

pytestmark = pytest.mark.anyio

USER, PASSWORD = "admin", "Power-reads-1"


def system_reads(emulator: SushyEmulator, uuid: str) -> int:
    """GETs of the system resource (the power state's) in the emulator's request log."""
    log = emulator.log_path.read_text(errors="replace")
    return log.count(f'"GET /redfish/v1/Systems/{uuid} ')


async def until_done(call: Callable[[], Awaitable[Result]]) -> None:
    with anyio.fail_after(30):
        while True:
            result = await call()
            assert not result.error_message, result.error_message
            if result.complete:
                return
            await anyio.sleep(min(result.requeue_after, 0.2))


def _host(name: str, address: str) -> BareMetalHost:
    return BareMetalHost.from_json(
        {
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {"name": name, "namespace": "t", "uid": f"uid-{name}"},
            "spec": {"bmc": {"address": address, "credentialsName": f"{name}-bmc"}},
        }
    )


@dataclass
class Registered:
    """A host registered with a direct provisioner against the real emulator; the
    provisioner's clock (`now[0]`) is moved by the test only: no timing luck."""

    emulator: SushyEmulator
    uuid: str
    host: BareMetalHost
    factory: DirectProvisionerFactory
    access: ManagementAccessData
    now: list[float]

    def reads(self) -> int:
        return system_reads(self.emulator, self.uuid)


@contextlib.asynccontextmanager
async def registered(name: str, power_delay: int | None = None) -> AsyncIterator[Registered]:
    system = fake_systems(1, prefix=name)[0]
    with SushyEmulator([system], users={USER: PASSWORD}, power_delay=power_delay) as emulator:
        address = emulator.address(system)
        host = _host(name, address)
        now = [1000.0]
        factory = DirectProvisionerFactory(
            DirectSettings(poll_interval=0.2, bmc_wait=5.0), clock=lambda: now[0]
        )
        # Registering and powering on need no API client (the agent's records are not read).
        services = ProvisionerServices(client=cast(Any, None), wake=lambda ns, name: None)
        async with anyio.create_task_group() as tg:
            await tg.start(factory.run, services)
            access = ManagementAccessData(address, Credentials(USER, PASSWORD), False, None, None)
            await until_done(lambda: factory.for_host(host).register(access, force=False))
            yield Registered(emulator, system.uuid, host, factory, access, now)
            tg.cancel_scope.cancel()


async def test_the_state_a_power_step_just_read_is_not_read_again() -> None:
    async with registered("reads") as r:
        host, factory = r.host, r.factory
        await until_done(lambda: factory.for_host(host).power_on(force=False))
        before = r.reads()

        state = await factory.for_host(host).power_state()
        assert state.powered_on is True
        assert r.reads() == before  # the power on's read stood

        r.now[0] += FRESH_POWER_READ
        state = await factory.for_host(host).power_state()
        assert state.powered_on is True
        assert r.reads() == before + 1  # too old: asked again

        # Any other BMC call may change the power: the next question goes to the BMC.
        await until_done(lambda: factory.for_host(host).power_on(force=False))
        await factory.for_host(host).register(r.access, force=True)
        after_register = r.reads()
        await factory.for_host(host).power_state()
        assert r.reads() == after_register + 1


async def test_a_power_step_after_a_power_read_in_one_reconcile_reads_once() -> None:
    """The state machine asks `power_state`, then `power_on`, of one provisioner (one per
    reconcile): the second must use the first's read. Reading again sent, on a BMC slower than
    `bmc_wait`, a second background read every reconcile and never the power request."""
    async with registered("once") as r:
        r.now[0] += FRESH_POWER_READ  # the registration's read is too old to stand
        before = r.reads()
        reconcile = r.factory.for_host(r.host)
        assert (await reconcile.power_state()).powered_on is False
        await reconcile.power_on(force=False)
        log = r.emulator.log_path.read_text(errors="replace").splitlines()
        calls = [line for line in log if f"/Systems/{r.uuid}" in line][-3:]
        # One read, the request (not a second read before it), one look right after it.
        assert r.reads() == before + 2
        assert ["GET" in calls[0], "POST" in calls[1], "GET" in calls[2]] == [True] * 3


@pytest.mark.parametrize("delay", [0, 2])
async def test_a_power_change_is_looked_for_once_right_after_its_request(delay: int) -> None:
    """Right after a power request the provisioner reads the power once: a BMC that applied
    the change already (no delay) ends the step in the same call, one that applies it later
    leaves the step in progress with the first poll soon after."""
    async with registered(f"look{delay}", power_delay=delay) as r:
        r.now[0] += FRESH_POWER_READ
        before = r.reads()
        result = await r.factory.for_host(r.host).power_on(force=False)
        assert r.reads() == before + 2  # before and after
        if delay == 0:
            assert result.complete and not result.error_message
        else:
            assert not result.complete and not result.error_message
            assert result.requeue_after == pytest.approx(FIRST_POWER_POLL)
