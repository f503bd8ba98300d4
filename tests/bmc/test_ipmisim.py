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
