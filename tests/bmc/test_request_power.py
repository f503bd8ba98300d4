"""`BMC.request_power`: send a power request and return, never wait for the power to change.

A reconcile must not hold its worker for the seconds a BMC takes to apply a power change. The
Redfish emulator's fake driver applies changes 1-11 s after the request; the IPMI simulator
applies them at once, except a soft off that its "hung OS" ignores. Reference power states come
from the emulator's own JSON and from ipmitool, not from our drivers.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator

import anyio
import pytest

from metal3.bmc import PowerAction, PowerState, connect
from metal3.bmc.credentials import Credentials
from metal3.bmc.emulators import FakeSystem, IPMISimulator, SushyEmulator, fake_systems
from metal3.bmc.interface import BMC

pytestmark = pytest.mark.anyio

USER, PASSWORD = "admin", "Power-pw-9"
CREDS = Credentials(USER, PASSWORD)
SETTLE = 30.0  # upper bound for a change to land (the fake driver takes at most 12 s)


@pytest.fixture(scope="module")
def emulator() -> Iterator[SushyEmulator]:
    """Two systems of our own: one off, one on (the session's emulator is shared)."""
    off, on = fake_systems(2, prefix="request")
    systems = [off, FakeSystem(name=on.name, uuid=on.uuid, power_state="On")]
    with SushyEmulator(systems, users={USER: PASSWORD}) as started:
        yield started


def emulator_power(emulator: SushyEmulator, system: FakeSystem) -> str:
    request = urllib.request.Request(emulator.url + system.path)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["PowerState"])


def requests_after_reset(emulator: SushyEmulator, system: FakeSystem) -> list[str] | None:
    """The emulator's access-log lines for the system after its last Reset POST (None: no POST
    logged yet)."""
    lines = [line for line in emulator.log_tail(200_000).splitlines() if system.uuid in line]
    posts = [i for i, line in enumerate(lines) if "ComputerSystem.Reset" in line]
    return lines[posts[-1] + 1 :] if posts else None


async def settles_to(bmc: BMC, want: PowerState) -> list[PowerState]:
    """Poll until the BMC reports ``want``; the states seen on the way."""
    seen = [await bmc.power_state()]
    with anyio.fail_after(SETTLE):
        while seen[-1] != want:
            await anyio.sleep(0.2)
            seen.append(await bmc.power_state())
    return seen


async def redfish_request_returns_before_the_change(
    emulator: SushyEmulator, system: FakeSystem, action: PowerAction, old: str, new: str
) -> None:
    async with connect(emulator.address(system), CREDS) as bmc:
        assert emulator_power(emulator, system) == old
        await bmc.request_power(action)
        # The driver sent the Reset and nothing after it: it did not poll for the new state.
        with anyio.fail_after(10):  # the emulator logs a request just after answering it
            while (after := requests_after_reset(emulator, system)) is None:
                await anyio.sleep(0.02)
        assert after == [], after
        # Right after the request the power may well still be the old one...
        assert emulator_power(emulator, system) in (old, new)
        # ...and polling sees it land.
        seen = await settles_to(bmc, PowerState.ON if new == "On" else PowerState.OFF)
    assert emulator_power(emulator, system) == new
    assert set(seen) <= {PowerState.ON, PowerState.OFF, PowerState.CHANGING}


async def test_redfish_request_power_on_and_off(emulator: SushyEmulator) -> None:
    off, on = emulator.systems
    async with anyio.create_task_group() as group:
        group.start_soon(
            redfish_request_returns_before_the_change, emulator, off, PowerAction.ON, "Off", "On"
        )
        group.start_soon(
            redfish_request_returns_before_the_change,
            emulator,
            on,
            PowerAction.HARD_OFF,
            "On",
            "Off",
        )


def ipmitool_power(sim: IPMISimulator, user: str) -> str:
    tool = shutil.which("ipmitool")
    assert tool, "ipmitool (Debian package) is required: see system-packages.txt"
    target = ["-I", "lanplus", "-H", "127.0.0.1", "-p", str(sim.port), "-U", user, "-E"]
    result = subprocess.run(
        [tool, *target, "power", "status"],
        env={"IPMI_PASSWORD": sim.users[user]},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    match = re.search(r"Chassis Power is (on|off)", result.stdout)
    assert match, result.stdout
    return match.group(1)


async def test_ipmi_request_power_on_and_off() -> None:
    with IPMISimulator(users={"u": "p"}) as sim:
        bmc = connect(sim.address(), Credentials("u", "p"))
        assert ipmitool_power(sim, "u") == "off"
        await bmc.request_power(PowerAction.ON)
        assert ipmitool_power(sim, "u") in ("off", "on")
        await settles_to(bmc, PowerState.ON)
        assert ipmitool_power(sim, "u") == "on"
        await bmc.request_power(PowerAction.HARD_OFF)
        await settles_to(bmc, PowerState.OFF)
        assert ipmitool_power(sim, "u") == "off"


async def test_ipmi_soft_off_request_returns_while_the_host_stays_on() -> None:
    """A host that ignores the soft-off request never goes off: the request returns anyway
    (the blocking power_off would wait for the state, then force it)."""
    with IPMISimulator(users={"u": "p"}, ignore_soft_off=True) as sim:
        bmc = connect(sim.address(), Credentials("u", "p"))
        await bmc.request_power(PowerAction.ON)
        await settles_to(bmc, PowerState.ON)
        with anyio.fail_after(SETTLE):  # a bound on a hang, not a timing assertion
            await bmc.request_power(PowerAction.SOFT_OFF)
        assert await bmc.power_state() == PowerState.ON
        assert ipmitool_power(sim, "u") == "on"
