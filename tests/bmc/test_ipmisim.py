"""Our IPMI simulator, checked on its own with ipmitool (an independent RMCP+ client)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from metal3.bmc.emulators import IPMISimulator


def run_ipmitool(sim: IPMISimulator, user: str, password: str, *args: str) -> str:
    tool = shutil.which("ipmitool")
    assert tool, "ipmitool (Debian package) is required: see system-packages.txt"
    result = subprocess.run(
        [tool, "-I", "lanplus", "-H", "127.0.0.1", "-p", str(sim.port), "-U", user, "-E", *args],
        env={"IPMI_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def sim() -> Iterator[IPMISimulator]:
    with IPMISimulator(users={"admin": "sim-secret"}) as simulator:
        yield simulator


def test_power_state_round_trip(sim: IPMISimulator) -> None:
    assert "Chassis Power is off" in run_ipmitool(sim, "admin", "sim-secret", "power", "status")
    assert "Up/On" in run_ipmitool(sim, "admin", "sim-secret", "power", "on")
    assert "Chassis Power is on" in run_ipmitool(sim, "admin", "sim-secret", "power", "status")
    assert "Reset" in run_ipmitool(sim, "admin", "sim-secret", "power", "reset")
    assert "Soft" in run_ipmitool(sim, "admin", "sim-secret", "power", "soft")
    assert "Chassis Power is off" in run_ipmitool(sim, "admin", "sim-secret", "power", "status")


def test_reset_needs_power(sim: IPMISimulator) -> None:
    run_ipmitool(sim, "admin", "sim-secret", "power", "off")
    output = run_ipmitool(sim, "admin", "sim-secret", "power", "reset")
    assert "Command not supported in present state" in output  # completion code 0xd5


def test_boot_flags_round_trip(sim: IPMISimulator) -> None:
    run_ipmitool(sim, "admin", "sim-secret", "chassis", "bootdev", "disk")
    report = run_ipmitool(sim, "admin", "sim-secret", "chassis", "bootparam", "get", "5")
    assert "Boot Device Selector : Force Boot from default Hard-Drive" in report
    assert "Options apply to only next boot" in report
    assert "BIOS EFI boot" not in report
    run_ipmitool(sim, "admin", "sim-secret", "chassis", "bootdev", "pxe", "options=efiboot")
    report = run_ipmitool(sim, "admin", "sim-secret", "chassis", "bootparam", "get", "5")
    assert "Boot Device Selector : Force PXE" in report
    assert "BIOS EFI boot" in report


def test_unknown_user_gets_rakp2_unauthorized_name(sim: IPMISimulator) -> None:
    output = run_ipmitool(sim, "stranger", "sim-secret", "-v", "power", "status")
    assert "RAKP 2 message indicates an error : unauthorized name" in output


def test_wrong_password_fails_the_rakp2_check(sim: IPMISimulator) -> None:
    output = run_ipmitool(sim, "admin", "wrong", "power", "status")
    assert "Unable to establish IPMI v2 / RMCP+ session" in output
    assert "Chassis Power" not in output


def test_sha256_cipher_suite_is_refused_with_status_0x11(sim: IPMISimulator) -> None:
    output = run_ipmitool(sim, "admin", "sim-secret", "-C", "17", "power", "status")
    assert "no matching cipher suite" in output
    assert "Chassis Power is" in run_ipmitool(
        sim, "admin", "sim-secret", "-C", "3", "power", "status"
    )


def test_a_packet_queued_for_a_session_that_is_gone_is_answered_not_fatal() -> None:
    """pyghmi hands a packet it had queued for a session that has gone since (expired, or
    replaced by the client's next one) to that session as sessionless data, which pyghmi's
    server session cannot take: the simulator died of an AttributeError (seen with 50 hosts
    under load). Played here in-process with the simulator's own objects: an RMCP+ session is
    opened, forgotten, and a packet queued for it is processed; the BMC answers it."""
    import socket

    from pyghmi.ipmi.private import session as ipmi_session

    from metal3.bmc.emulators import free_port
    from metal3.bmc.ipmisim import SimSession, SimulatedBMC

    port = free_port(socket.SOCK_DGRAM)
    bmc = SimulatedBMC({"admin": "sim-secret"}, address="127.0.0.1", port=port)
    # An RMCP+ Open Session Request (cipher suite 3: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC).
    payload = bytes([1, 4, 0, 0, 0x78, 0x56, 0x34, 0x12])
    for kind in (0, 1, 2):
        payload += bytes([kind, 0, 0, 8, 1, 0, 0, 0])
    request = (
        bytes([6, 0, 0xFF, 7, 6, 0x10]) + bytes(8) + len(payload).to_bytes(2, "little") + payload
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.settimeout(5)
        address = client.getsockname()

        def answer() -> bytes:
            for _ in range(20):
                ipmi_session.Session.wait_for_rsp(timeout=0.1)
                try:
                    return client.recv(1024)
                except TimeoutError:
                    continue
            raise AssertionError("no answer from the simulator")

        client.sendto(request, ("127.0.0.1", port))
        client.settimeout(0.05)
        reply = answer()
        assert reply[:4] == bytes([6, 0, 0xFF, 7]) and reply[5] == 0x11  # open session response
        session = ipmi_session.Session.bmc_handlers[address][port]
        assert isinstance(session, SimSession)

        del ipmi_session.Session.bmc_handlers[address]  # the session is gone ...
        session.pktqueue.append((request, address, bmc.serversocket))  # ... with a packet queued
        session.process_pktqueue()  # raised AttributeError before
        again = answer()  # the BMC took it: a new session's open response
        assert again[:4] == bytes([6, 0, 0xFF, 7]) and again[5] == 0x11
        assert ipmi_session.Session.bmc_handlers[address][port] is not session
    del ipmi_session.Session.bmc_handlers[address]
    del ipmi_session.Session.bmc_handlers[bmc.serversocket]
    # pyghmi's I/O thread selects on every socket in its shared list: closing one still listed
    # kills the thread with EBADF (and with it every later pyghmi session of this process).
    ipmi_session.iosockets.remove(bmc.serversocket)
    bmc.serversocket.close()
