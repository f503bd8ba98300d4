"""Our IPMI driver against an unmodified virtualbmc, started as the VM lab starts it
(`metal3.lab.vmbmcs`: virtualbmc's own `vbmcd`, config files only), on domains of a private
libvirtd (`metal3.lab.libvirtd`) in a namespace of this test's own.

virtualbmc's IPMI server (pyghmi's) accepts a proposal of cipher suite 17 (SHA-256) and then
answers RAKP with SHA-1, which crashes the login of pyghmi's client, the one our driver uses.
ipmitool shows that the BMC behaves so (`-C 17` fails) and referees, with suite 3, what our
driver did. Each test has its own domain and BMC: the driver remembers suites per BMC.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from metal3.bmc.address import parse_address
from metal3.bmc.credentials import Credentials
from metal3.bmc.interface import BootDevice, PowerState
from metal3.bmc.ipmi import IPMIBMC, known_cipher_suite
from metal3.bmc.ipmiworkers import SUITE_SHA1, WorkerPool
from metal3.lab.libvirtd import LabLibvirt, virsh
from metal3.lab.vmbmcs import VmBmcPlan, VmBmcs
from metal3.lab.vms import EMULATOR, MACHINE

USER = "admin"
PASSWORD = "Vbmc-pw-23"
CREDS = Credentials(USER, PASSWORD)
DOMAINS = ("vm-fallback", "vm-power")


@dataclass(frozen=True)
class VbmcLab:
    uri: str
    bmcs: VmBmcs

    def port(self, name: str) -> int:
        return self.bmcs.ipmi_ports[name]

    def driver(self, name: str, pool: WorkerPool | None = None) -> IPMIBMC:
        return IPMIBMC(parse_address(self.bmcs.address(name)), CREDS, call_timeout=60, pool=pool)

    def domstate(self, name: str) -> str:
        return virsh(self.uri, "domstate", name).strip()

    def boot_dev(self, name: str) -> str | None:
        boot = ET.fromstring(virsh(self.uri, "dumpxml", "--inactive", name)).find("os/boot")
        return None if boot is None else boot.get("dev")


def minimal_domain(name: str) -> str:
    """A diskless, NIC-less TCG domain: enough for power and boot device, cheap to run."""
    return (
        f"<domain type='qemu'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        f"<os><type arch='x86_64' machine='{MACHINE}'>hvm</type><boot dev='network'/></os>"
        f"<devices><emulator>{EMULATOR}</emulator>"
        "<video><model type='none'/></video></devices></domain>"
    )


@pytest.fixture(scope="module")
def vbmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VbmcLab]:
    root = tmp_path_factory.mktemp("vbmc")
    namespace = f"m3-vbmc-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    libvirt = LabLibvirt(root / "libvirt", namespace)
    bmcs: VmBmcs | None = None
    try:
        libvirt.prepare()
        libvirt.launch()
        libvirt.wait_ready(timeout=120)
        plans = []
        for name in DOMAINS:
            xml = root / f"{name}.xml"
            xml.write_text(minimal_domain(name))
            virsh(libvirt.uri, "define", str(xml))
            plans.append(VmBmcPlan(name, "ipmi", str(uuid.uuid4()), USER, PASSWORD))
        bmcs = VmBmcs(root / "bmc", plans, libvirt.uri)
        bmcs.launch()
        bmcs.wait_ready(timeout=120)
        yield VbmcLab(libvirt.uri, bmcs)
    finally:
        if bmcs is not None:
            bmcs.stop()
        for name in DOMAINS:
            if (
                libvirt.processes
                and "running"
                in subprocess.run(
                    ["virsh", "-q", "-c", libvirt.uri, "domstate", name],
                    capture_output=True,
                    text=True,
                ).stdout
            ):
                virsh(libvirt.uri, "destroy", name)
        libvirt.stop()
        subprocess.run(["ip", "netns", "delete", namespace], check=True)


def ipmitool(
    lab: VbmcLab, name: str, *args: str, suite: int = 3
) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("ipmitool")
    assert tool, "ipmitool (Debian package) is required: see system-packages.txt"
    return subprocess.run(
        [tool, "-I", "lanplus", "-C", str(suite), "-H", "127.0.0.1", "-p", str(lab.port(name)),
         "-U", USER, "-E", *args],
        env={"IPMI_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def referee(lab: VbmcLab, name: str, *args: str) -> str:
    done = ipmitool(lab, name, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_vbmcd_is_stock_and_answers_suite_17_with_sha1(vbmc: VbmcLab) -> None:
    assert vbmc.bmcs.vbmcd is not None
    # [python,] .../vbmcd --foreground: the console script, nothing of ours in between
    argv = Path(f"/proc/{vbmc.bmcs.vbmcd.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert Path(argv[-2].decode()).name == "vbmcd" and argv[-1] == b"--foreground"
    assert len(argv) <= 3 and b"-m" not in argv
    refused = ipmitool(vbmc, "vm-power", "power", "status", suite=17)
    assert refused.returncode != 0
    assert "not what we requested" in refused.stderr
    assert "Chassis Power is off" in referee(vbmc, "vm-power", "power", "status")


@pytest.mark.anyio
async def test_driver_falls_back_to_suite_3_once_and_remembers_it(
    vbmc: VbmcLab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metal3.bmc")
    port = vbmc.port("vm-fallback")
    assert known_cipher_suite("127.0.0.1", port) is None
    assert await vbmc.driver("vm-fallback").power_state() == PowerState.OFF
    assert "Chassis Power is off" in referee(vbmc, "vm-fallback", "power", "status")
    assert known_cipher_suite("127.0.0.1", port) == SUITE_SHA1
    said = [r.getMessage() for r in caplog.records if "cipher suite" in r.getMessage()]
    assert said == [f"IPMI BMC 127.0.0.1 port {port}: using cipher suite 3 (SHA-1) "
                    "(its RAKP failed with suite 17, SHA-256)"]  # fmt: skip
    # A new driver object on fresh worker processes: straight to suite 3, nothing logged again.
    pool = WorkerPool(size=1)
    try:
        device = await vbmc.driver("vm-fallback", pool).device_id()
    finally:
        pool.close()
    assert device.ipmi_version == "2.0"
    assert [r.getMessage() for r in caplog.records if "cipher suite" in r.getMessage()] == said
    assert PASSWORD not in caplog.text


@pytest.mark.anyio
async def test_power_and_boot_device_through_the_driver(vbmc: VbmcLab) -> None:
    bmc = vbmc.driver("vm-power")
    assert await bmc.power_state() == PowerState.OFF
    await bmc.set_boot_device(BootDevice.DISK, persistent=True)
    assert vbmc.boot_dev("vm-power") == "hd"
    assert "Hard-Drive" in referee(vbmc, "vm-power", "chassis", "bootparam", "get", "5")
    await bmc.set_boot_device(BootDevice.PXE, persistent=True)
    assert vbmc.boot_dev("vm-power") == "network"
    assert "PXE" in referee(vbmc, "vm-power", "chassis", "bootparam", "get", "5")
    await bmc.power_on(wait=90)
    try:
        assert vbmc.domstate("vm-power") == "running"
        assert "Chassis Power is on" in referee(vbmc, "vm-power", "power", "status")
        assert await bmc.power_state() == PowerState.ON
    finally:
        await bmc.power_off(soft_wait=None, wait=90)
    assert vbmc.domstate("vm-power") == "shut off"
    assert "Chassis Power is off" in referee(vbmc, "vm-power", "power", "status")
    assert await bmc.power_state() == PowerState.OFF
