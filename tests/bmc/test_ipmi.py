"""The IPMI driver (pyghmi in worker processes) against our simulator; ipmitool referees.

State written through our driver is read back with `ipmitool -I lanplus`, an independent
client, so the driver and the simulator cannot agree on a shared mistake.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess

import anyio
import pytest

from metal3.bmc import connect
from metal3.bmc.address import parse_address
from metal3.bmc.credentials import Credentials
from metal3.bmc.emulators import IPMISimulator, free_port, silent_udp_port
from metal3.bmc.errors import (
    BMCAuthError,
    BMCTimeoutError,
    BMCUnreachableError,
    BMCUnsupportedError,
)
from metal3.bmc.interface import BootDevice, PowerState
from metal3.bmc.ipmi import IPMIBMC
from metal3.bmc.ipmiworkers import WorkerPool

pytestmark = pytest.mark.anyio
# The users the session's simulator is started with (tests/bmc/conftest.py).
IPMI_USER = "root"
IPMI_PASSWORD = "Ipmi-pw-17"
CREDS = Credentials(IPMI_USER, IPMI_PASSWORD)


def ipmitool(sim: IPMISimulator, *args: str, user: str = IPMI_USER) -> str:
    tool = shutil.which("ipmitool")
    assert tool, "ipmitool (Debian package) is required: see system-packages.txt"
    result = subprocess.run(
        [tool, "-I", "lanplus", "-H", "127.0.0.1", "-p", str(sim.port), "-U", user, "-E", *args],
        env={"IPMI_PASSWORD": sim.users[user]},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def bmc_for(sim: IPMISimulator, creds: Credentials = CREDS, **kwargs: float) -> IPMIBMC:
    return IPMIBMC(parse_address(sim.address()), creds, **kwargs)


async def test_validate_and_device_id(ipmi_sim: IPMISimulator) -> None:
    bmc = bmc_for(ipmi_sim)
    await bmc.validate()
    device = await bmc.device_id()
    info = ipmitool(ipmi_sim, "mc", "info")
    fields = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in info.splitlines())
        if value
    }
    assert str(device.device_id) == fields["Device ID"]
    assert device.firmware == fields["Firmware Revision"]
    assert device.ipmi_version == fields["IPMI Version"]
    assert str(device.manufacturer_id) == fields["Manufacturer ID"]
    assert fields["Product ID"].startswith(f"{device.product_id} ")


async def test_power_cycle_seen_by_ipmitool(ipmi_sim: IPMISimulator) -> None:
    bmc = connect(ipmi_sim.address(), CREDS)
    await bmc.power_on(wait=10)
    assert "Chassis Power is on" in ipmitool(ipmi_sim, "power", "status")
    assert await bmc.power_state() == PowerState.ON
    await bmc.reboot(wait=10)
    assert await bmc.power_state() == PowerState.ON
    await bmc.power_off(soft_wait=5, wait=10)
    assert "Chassis Power is off" in ipmitool(ipmi_sim, "power", "status")
    assert await bmc.power_state() == PowerState.OFF
    await bmc.reboot(wait=10)  # from off: powers on
    assert "Chassis Power is on" in ipmitool(ipmi_sim, "power", "status")
    await bmc.power_off(soft_wait=None, wait=10)  # hard only
    assert "Chassis Power is off" in ipmitool(ipmi_sim, "power", "status")
    ipmitool(ipmi_sim, "power", "on")  # and the other way round
    assert await bmc.power_state() == PowerState.ON
    ipmitool(ipmi_sim, "power", "off")
    assert await bmc.power_state() == PowerState.OFF


@pytest.mark.parametrize(
    ("device", "persistent", "uefi", "selector"),
    [
        (BootDevice.PXE, True, True, "Force PXE"),
        (BootDevice.CD, False, False, "Force Boot from CD/DVD"),
        (BootDevice.DISK, True, False, "Force Boot from default Hard-Drive"),
    ],
)
async def test_boot_device_seen_by_ipmitool(
    ipmi_sim: IPMISimulator, device: BootDevice, persistent: bool, uefi: bool, selector: str
) -> None:
    bmc = bmc_for(ipmi_sim)
    await bmc.set_boot_device(device, persistent=persistent, uefi=uefi)
    settings = await bmc.boot_settings()
    assert (settings.device, settings.persistent, settings.uefi) == (device, persistent, uefi)
    report = ipmitool(ipmi_sim, "chassis", "bootparam", "get", "5")
    assert f"Boot Device Selector : {selector}" in report
    assert ("Options apply to all future boots" in report) is persistent
    assert ("BIOS EFI boot" in report) is uefi


async def test_boot_device_set_by_ipmitool(ipmi_sim: IPMISimulator) -> None:
    ipmitool(ipmi_sim, "chassis", "bootdev", "cdrom", "options=persistent,efiboot")
    settings = await bmc_for(ipmi_sim).boot_settings()
    assert (settings.device, settings.persistent, settings.uefi) == (BootDevice.CD, True, True)


async def test_operator_privilege_level(ipmi_sim: IPMISimulator) -> None:
    address = parse_address(f"ipmi://127.0.0.1:{ipmi_sim.port}?privilegelevel=OPERATOR")
    bmc = IPMIBMC(address, Credentials("operator", "op-pw"))
    assert await bmc.power_state() in (PowerState.ON, PowerState.OFF)


async def test_redfish_only_operations_are_unsupported(ipmi_sim: IPMISimulator) -> None:
    bmc = bmc_for(ipmi_sim)
    for call in (bmc.inventory, bmc.bios_attributes, bmc.eject_media, bmc.health):
        with pytest.raises(BMCUnsupportedError, match="not supported by the ipmi driver"):
            await call()


async def test_soft_off_ignored_then_forced(caplog: pytest.LogCaptureFixture) -> None:
    """A host whose OS ignores the soft-off request is forced off after the soft wait."""
    caplog.set_level(logging.INFO, logger="metal3.bmc")
    with IPMISimulator(users={"u": "p"}, ignore_soft_off=True) as sim:
        bmc = connect(sim.address(), Credentials("u", "p"))
        await bmc.power_on(wait=10)
        await bmc.power_off(soft_wait=0.5, wait=10)
        assert "Chassis Power is off" in ipmitool(sim, "power", "status", user="u")
        assert "soft power off timed out, forcing" in caplog.text
        caplog.clear()
        await bmc.power_on(wait=10)
        # With no soft wait the same host goes off at once, without a soft attempt.
        await bmc.power_off(soft_wait=None, wait=10)
        assert "Chassis Power is off" in ipmitool(sim, "power", "status", user="u")
        assert "forcing" not in caplog.text


async def test_many_bmcs_and_calls_at_once() -> None:
    """Concurrent calls on several BMCs (and several per BMC, serialised) all complete."""
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(IPMISimulator(users={"u": "p"})) for _ in range(3)]
        bmcs = [connect(sim.address(), Credentials("u", "p")) for sim in sims]
        seen: list[PowerState] = []

        async def worker(index: int) -> None:
            bmc = bmcs[index % len(bmcs)]
            if index < len(bmcs):
                await bmc.power_on(wait=10)
            else:
                await bmc.set_boot_device(BootDevice.PXE, persistent=True)
            seen.append(await bmc.power_state())

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for index in range(15):
                    group.start_soon(worker, index)
        assert len(seen) == 15
        for sim in sims:
            assert "Chassis Power is on" in ipmitool(sim, "power", "status", user="u")
            assert "Force PXE" in ipmitool(sim, "chassis", "bootparam", "get", "5", user="u")


# -- failures ------------------------------------------------------------------------------------


async def test_wrong_password(ipmi_sim: IPMISimulator) -> None:
    with pytest.raises(BMCAuthError, match="Incorrect password") as info:
        await bmc_for(
            ipmi_sim, Credentials(IPMI_USER, "not-the-password"), call_timeout=10
        ).validate()
    assert "not-the-password" not in str(info.value)


async def test_unknown_user_is_rejected_not_hung(ipmi_sim: IPMISimulator) -> None:
    with anyio.fail_after(10):
        with pytest.raises(BMCAuthError, match="Unauthorized name"):
            await bmc_for(ipmi_sim, Credentials("intruder", IPMI_PASSWORD)).validate()


async def test_dead_bmc_times_out_without_blocking_others(ipmi_sim: IPMISimulator) -> None:
    """A BMC that swallows every packet costs its caller the deadline, nobody else anything."""
    finished: list[str] = []
    with silent_udp_port() as port:
        dead = IPMIBMC(parse_address(f"ipmi://127.0.0.1:{port}"), CREDS, call_timeout=4)
        alive = bmc_for(ipmi_sim)

        async def call_dead() -> None:
            with pytest.raises(BMCTimeoutError, match="no answer from the BMC within 4s"):
                await dead.power_state()
            finished.append("dead")

        async def call_alive() -> None:
            for _ in range(3):
                await alive.power_state()
            finished.append("alive")

        async with anyio.create_task_group() as group:
            group.start_soon(call_dead)
            await anyio.sleep(0.1)  # the dead call is in flight first
            group.start_soon(call_alive)
    assert finished == ["alive", "dead"]


async def test_worker_that_misses_the_deadline_is_replaced(ipmi_sim: IPMISimulator) -> None:
    pool = WorkerPool(size=1)
    try:
        with silent_udp_port() as port:
            dead = IPMIBMC(
                parse_address(f"ipmi://127.0.0.1:{port}"), CREDS, call_timeout=1, pool=pool
            )
            with pytest.raises(BMCTimeoutError):
                await dead.power_state()
        # The only worker was killed at the deadline; the next call gets a fresh one.
        alive = IPMIBMC(parse_address(ipmi_sim.address()), CREDS, pool=pool)
        assert await alive.power_state() in (PowerState.ON, PowerState.OFF)
        assert await alive.power_state() in (PowerState.ON, PowerState.OFF)
    finally:
        pool.close()


async def test_nothing_listening() -> None:
    bmc = IPMIBMC(parse_address(f"ipmi://127.0.0.1:{free_port()}"), CREDS, call_timeout=3)
    with pytest.raises(BMCUnreachableError):
        await bmc.validate()


async def test_no_secret_in_any_log_line(
    ipmi_sim: IPMISimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await bmc_for(ipmi_sim).power_state()
    with pytest.raises(BMCAuthError) as info:
        await bmc_for(ipmi_sim, Credentials(IPMI_USER, "Wrong-ipmi-77")).validate()
    for secret in (IPMI_PASSWORD, "Wrong-ipmi-77"):
        assert secret not in caplog.text
        assert secret not in str(info.value)


def test_pyghmi_errors_without_a_message_say_what_is_known() -> None:
    """pyghmi raises some errors with None as their text (a session it marked broken without
    a reason, seen under load): the host's status read "...: None". The worker now says what
    is known, and a broken session is an unreachable BMC, not a refusal."""
    from pyghmi.exceptions import IpmiException

    from metal3.bmc.errors import BMCRefusedError, BMCServerError
    from metal3.bmc.ipmiworkers import WorkerFailure, ipmi_failure

    bmc = IPMIBMC(parse_address("ipmi://127.0.0.1:623"), CREDS)

    def mapped(exc: Exception) -> Exception:
        _, kind, message, code = ipmi_failure(exc)
        return bmc._map_error(WorkerFailure(kind, message, code))

    broken = mapped(IpmiException(None))
    assert isinstance(broken, BMCUnreachableError)
    assert "None" not in str(broken) and "session broke" in str(broken), broken
    coded = mapped(IpmiException(None, code=0xD5))
    assert isinstance(coded, BMCRefusedError) and "completion code 0xd5" in str(coded), coded
    busy = mapped(IpmiException("Node busy", code=0xC0))
    assert isinstance(busy, BMCServerError) and "Node busy" in str(busy), busy
    plain = mapped(IpmiException("Unauthorized name"))
    assert isinstance(plain, BMCAuthError), plain
