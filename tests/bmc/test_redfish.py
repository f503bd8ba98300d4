"""The Redfish driver against sushy-tools' emulator (fake driver), and its failure modes.

Reference values come from the emulator's own JSON (read with urllib, not through our code) and
from the configuration the emulator was started with.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from metal3.bmc import connect
from metal3.bmc.address import parse_address
from metal3.bmc.credentials import Credentials
from metal3.bmc.emulators import FakeSystem, SushyEmulator, free_port, silent_tcp_server
from metal3.bmc.errors import (
    BMCAuthError,
    BMCCertificateError,
    BMCRefusedError,
    BMCTimeoutError,
    BMCUnreachableError,
    BMCUnsupportedError,
)
from metal3.bmc.interface import BootDevice, PowerState
from metal3.bmc.redfish import RedfishBMC

pytestmark = pytest.mark.anyio
# The users the session's emulators are started with (tests/bmc/conftest.py).
REDFISH_USER = "admin"
REDFISH_PASSWORD = "Redfish-pw-42"
CREDS = Credentials(REDFISH_USER, REDFISH_PASSWORD)


def raw_get(emulator: SushyEmulator, path: str) -> dict[str, Any]:
    """The emulator's JSON for `path`, fetched without our driver or sushy."""
    request = urllib.request.Request(emulator.url + path)
    token = base64.b64encode(f"{REDFISH_USER}:{REDFISH_PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(emulator.tls.ca_cert)) if emulator.tls else None
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        doc: dict[str, Any] = json.load(response)
        return doc


def driver(emulator: SushyEmulator, system: FakeSystem, **kwargs: Any) -> RedfishBMC:
    return RedfishBMC(parse_address(emulator.address(system)), CREDS, **kwargs)


async def test_validate_and_power_state(redfish: SushyEmulator) -> None:
    system = redfish.systems[0]
    async with driver(redfish, system) as bmc:
        await bmc.validate()
        state = await bmc.power_state()
    expected = raw_get(redfish, system.path)["PowerState"]
    assert state == {"On": PowerState.ON, "Off": PowerState.OFF}[expected]


async def test_power_operations_poll_until_the_state_lands(redfish: SushyEmulator) -> None:
    """On/soft-off/hard-off/reboot on three systems at once (the fake driver takes 1-11 s)."""
    first, second, third = redfish.systems[1:4]
    seen: dict[str, list[str]] = {}

    async def on_then_off(system: FakeSystem) -> None:
        async with driver(redfish, system, poll_interval=0.2) as bmc:
            await bmc.power_on(wait=30)
            seen.setdefault(system.name, []).append(raw_get(redfish, system.path)["PowerState"])
            # A soft wait shorter than the emulator's delay: the driver forces it off (the
            # deterministic check of that fallback is in test_ipmi.py).
            await bmc.power_off(soft_wait=0.01, wait=30)
            seen[system.name].append(raw_get(redfish, system.path)["PowerState"])

    async def reboot_from_off(system: FakeSystem) -> None:
        async with driver(redfish, system, poll_interval=0.2) as bmc:
            await bmc.reboot(wait=30)
            seen.setdefault(system.name, []).append(raw_get(redfish, system.path)["PowerState"])

    async def on_then_reboot(system: FakeSystem) -> None:
        async with driver(redfish, system, poll_interval=0.2) as bmc:
            await bmc.power_on(wait=30)
            await bmc.reboot(wait=30)
            seen.setdefault(system.name, []).append(raw_get(redfish, system.path)["PowerState"])
            assert await bmc.power_state() == PowerState.ON
            await bmc.power_on(wait=1)  # already on: returns without a request

    async with anyio.create_task_group() as group:
        group.start_soon(on_then_off, first)
        group.start_soon(reboot_from_off, second)
        group.start_soon(on_then_reboot, third)
    assert seen == {first.name: ["On", "Off"], second.name: ["On"], third.name: ["On"]}


async def test_power_wait_times_out_with_a_clear_error(redfish: SushyEmulator) -> None:
    system = redfish.systems[4]
    async with driver(redfish, system) as bmc:
        assert await bmc.power_state() == PowerState.OFF
        # No time to wait at all: the request is sent, the state cannot have landed yet.
        with pytest.raises(BMCTimeoutError, match="did not reach power on within 0s"):
            await bmc.power_on(wait=0)


@pytest.mark.parametrize(
    ("device", "persistent", "uefi", "target", "mode"),
    [
        (BootDevice.PXE, True, True, "Pxe", "UEFI"),
        (BootDevice.CD, True, False, "Cd", "Legacy"),
        (BootDevice.DISK, True, None, "Hdd", "Legacy"),
        (BootDevice.PXE, False, True, "Pxe", "UEFI"),
    ],
)
async def test_boot_device(
    redfish: SushyEmulator,
    device: BootDevice,
    persistent: bool,
    uefi: bool | None,
    target: str,
    mode: str,
) -> None:
    system = redfish.systems[5]
    async with driver(redfish, system) as bmc:
        await bmc.set_boot_device(device, persistent=persistent, uefi=uefi)
        settings = await bmc.boot_settings()
    boot = raw_get(redfish, system.path)["Boot"]
    assert boot["BootSourceOverrideTarget"] == target
    assert boot["BootSourceOverrideMode"] == mode  # uefi=None leaves the previous mode
    assert settings.device is device
    assert settings.uefi is (mode == "UEFI")
    if persistent:
        assert boot["BootSourceOverrideEnabled"] == "Continuous"
        assert settings.persistent
    # The fake driver reports "Once" as Continuous (field notes): nothing more to assert.


async def test_virtual_media_insert_and_eject(
    redfish: SushyEmulator, file_server: tuple[str, Path]
) -> None:
    base_url, root = file_server
    (root / "agent.iso").write_bytes(b"\0" * 4096)
    system = redfish.systems[0]
    url = f"{base_url}/agent.iso"
    async with driver(redfish, system) as bmc:
        await bmc.insert_media(url)
        state = await bmc.media_state()
        raw = raw_get(redfish, f"{system.path}/VirtualMedia/Cd")
        assert state.inserted and raw["Inserted"] is True
        assert raw["Image"] == url
        assert state.image == url
        await bmc.insert_media(url)  # re-inserting ejects first and works again
        await bmc.eject_media()
        raw = raw_get(redfish, f"{system.path}/VirtualMedia/Cd")
        assert raw["Inserted"] is False
        assert not (await bmc.media_state()).inserted
        await bmc.eject_media()  # nothing inserted: a no-op


async def test_inventory_matches_the_emulator(redfish: SushyEmulator) -> None:
    system = redfish.systems[2]
    async with driver(redfish, system) as bmc:
        inventory = await bmc.inventory()
        health = await bmc.health()
    raw = raw_get(redfish, system.path)
    assert inventory.manufacturer == raw["Manufacturer"]
    assert sorted(nic.mac for nic in inventory.nics) == sorted(mac for mac, _ in system.nics)
    assert [(d.name, d.size_bytes) for d in inventory.drives] == [
        (d.name, d.capacity_bytes) for d in system.drives
    ]
    assert inventory.health == raw["Status"]["Health"] == health
    # The fake driver has no processors or memory: empty, not an error.
    assert inventory.cpu.count is None
    assert inventory.memory_mib is None


async def test_bios_is_unsupported_by_the_fake_driver(redfish: SushyEmulator) -> None:
    async with driver(redfish, redfish.systems[0]) as bmc:
        with pytest.raises(BMCUnsupportedError, match="Bios"):
            await bmc.bios_attributes()
        with pytest.raises(BMCUnsupportedError):
            await bmc.set_bios_attributes({"ProcTurboMode": "Disabled"})


async def test_address_without_system_on_a_multi_system_bmc(redfish: SushyEmulator) -> None:
    address = parse_address(f"redfish+http://127.0.0.1:{redfish.port}/redfish/v1")
    async with RedfishBMC(address, CREDS) as bmc:
        with pytest.raises(BMCRefusedError, match="several systems"):
            await bmc.validate()


async def test_unknown_system(redfish: SushyEmulator) -> None:
    address = parse_address(f"redfish+http://127.0.0.1:{redfish.port}/redfish/v1/Systems/nope")
    async with RedfishBMC(address, CREDS) as bmc:
        with pytest.raises(BMCRefusedError, match="not found"):
            await bmc.power_state()


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "creds",
    [Credentials(REDFISH_USER, "wrong-password-123"), Credentials("nobody", REDFISH_PASSWORD)],
)
async def test_bad_credentials(redfish: SushyEmulator, creds: Credentials) -> None:
    async with RedfishBMC(parse_address(redfish.address(redfish.systems[0])), creds) as bmc:
        with pytest.raises(BMCAuthError, match="rejected the credentials") as info:
            await bmc.validate()
    assert creds.password not in str(info.value)


async def test_nothing_listening() -> None:
    address = parse_address(f"redfish+http://127.0.0.1:{free_port()}/redfish/v1/Systems/1")
    async with RedfishBMC(address, CREDS) as bmc:
        with pytest.raises(BMCUnreachableError, match="connection refused") as info:
            await bmc.validate()
    assert REDFISH_PASSWORD not in str(info.value)


async def test_bmc_that_accepts_but_never_answers() -> None:
    with silent_tcp_server() as port:
        address = parse_address(f"redfish+http://127.0.0.1:{port}/redfish/v1/Systems/1")
        async with RedfishBMC(address, CREDS, read_timeout=0.5) as bmc:
            with anyio.fail_after(10):
                with pytest.raises(BMCTimeoutError, match="did not answer in time"):
                    await bmc.validate()


async def test_tls_with_unknown_ca_fails(redfish_tls: SushyEmulator) -> None:
    system = redfish_tls.systems[0]
    bmc = connect(redfish_tls.address(system, scheme="redfish-virtualmedia"), CREDS)
    async with bmc:
        with pytest.raises(BMCCertificateError, match="disableCertificateVerification"):
            await bmc.validate()


async def test_tls_with_verification_disabled(redfish_tls: SushyEmulator) -> None:
    system = redfish_tls.systems[0]
    address = redfish_tls.address(system, scheme="redfish-virtualmedia")
    async with connect(address, CREDS, disable_certificate_verification=True) as bmc:
        await bmc.validate()
        assert await bmc.power_state() == PowerState.OFF
    wrong = Credentials(REDFISH_USER, "nope-nope")
    async with connect(address, wrong, disable_certificate_verification=True) as bmc:
        with pytest.raises(BMCAuthError):
            await bmc.validate()


async def test_tls_with_the_right_ca(redfish_tls: SushyEmulator) -> None:
    assert redfish_tls.tls is not None
    system = redfish_tls.systems[0]
    bmc = connect(redfish_tls.address(system), CREDS, ca_file=str(redfish_tls.tls.ca_cert))
    async with bmc:
        inventory = await bmc.inventory()
    assert [nic.mac for nic in inventory.nics] == [mac for mac, _ in system.nics]


async def test_single_system_found_without_a_path(redfish_tls: SushyEmulator) -> None:
    address = f"redfish+https://127.0.0.1:{redfish_tls.port}"
    async with connect(address, CREDS, disable_certificate_verification=True) as bmc:
        inventory = await bmc.inventory()
    assert [nic.mac for nic in inventory.nics] == [mac for mac, _ in redfish_tls.systems[0].nics]


async def test_no_secret_in_any_log_line(
    redfish: SushyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, sushy and urllib3 included
    system = redfish.systems[0]
    async with driver(redfish, system) as bmc:
        await bmc.validate()
        await bmc.power_state()
        await bmc.set_boot_device(BootDevice.DISK, persistent=True)
    wrong = Credentials(REDFISH_USER, "Wrong-secret-99")
    async with RedfishBMC(parse_address(redfish.address(system)), wrong) as bmc:
        with pytest.raises(BMCAuthError):
            await bmc.validate()
    assert caplog.records  # sushy did log the requests
    token = base64.b64encode(f"{REDFISH_USER}:{REDFISH_PASSWORD}".encode()).decode()
    for secret in (REDFISH_PASSWORD, "Wrong-secret-99", token):
        assert secret not in caplog.text


@contextlib.contextmanager
def trickling_server() -> Iterator[int]:
    """Answers every request with a header line every 0.1 s, forever: no read timeout trips."""
    stop = threading.Event()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.1):
                try:
                    conn.sendall(b"X-Slow: yes\r\n")
                except OSError:
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


async def test_trickling_bmc_hits_the_call_deadline() -> None:
    with trickling_server() as port:
        address = parse_address(f"redfish+http://127.0.0.1:{port}/redfish/v1/Systems/1")
        async with RedfishBMC(address, CREDS, read_timeout=0.5, call_timeout=1.5) as bmc:
            with anyio.fail_after(10):
                with pytest.raises(BMCTimeoutError, match=r"no complete answer within 1\.5s"):
                    await bmc.validate()


async def test_bmc_refusing_power_off_is_reported_as_refused() -> None:
    on = FakeSystem(name="always-on", power_state="On")
    users = {REDFISH_USER: REDFISH_PASSWORD}
    with SushyEmulator([on], users=users, disable_power_off=True) as emulator:
        async with driver(emulator, on) as bmc:
            assert await bmc.power_state() == PowerState.ON
            with pytest.raises(BMCRefusedError, match="400") as info:
                await bmc.power_off(soft_wait=None, wait=5)
            assert "Can not request power off" in str(info.value)
            with pytest.raises(BMCRefusedError):
                await bmc.power_off(soft_wait=1, wait=5)
        assert raw_get(emulator, on.path)["PowerState"] == "On"
