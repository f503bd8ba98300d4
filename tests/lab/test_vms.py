"""`metal3 lab up --vms 2`: TCG virtual machines under the lab's own libvirtd, driven through
our BMC drivers against sushy-tools' libvirt driver (Redfish, virtual media) and virtualbmc
(IPMI), cross-checked with independent tools (`virsh`, `ipmitool`, `ip`, `ss`); and that the
machine's own namespace is left alone and `lab down` leaves nothing.

VMs run only as long as a test needs to see firmware output on their serial console (TCG is
CPU-heavy and the machine is shared): each test powers its VM off before it ends. The lab
runs the boot server with the agent ramdisk (`metal3 ramdisk build`, from its cache when built
before); booting that ramdisk, from the network and from virtual media, and the rest of the
lifecycle through the operator are tests/provisioner/test_vm_e2e.py's.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.helpers import RootNamespace, root_namespace, root_namespace_sockets, run_metal3
from metal3.bmc import BMCAuthError, BootDevice, PowerState, connect
from metal3.bmc.credentials import Credentials
from metal3.lab import profiles, vms
from metal3.lab.resources import Journal, lab_prefixes, leftovers, process_start_time
from metal3.lab.state import LabHost, LabInfo, load_lab

BOOT_WAIT = 120.0  # seconds for firmware text to reach a console on a loaded machine


@dataclass
class VmLab:
    info: LabInfo
    data_dir: Path
    before: RootNamespace
    journal: list[dict[str, object]]

    def virsh(self, *args: str) -> str:
        return subprocess.run(
            ["virsh", "-q", "-c", self.info.libvirt_uri, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    def domstate(self, name: str) -> str:
        return self.virsh("domstate", name).strip()

    def xml(self, name: str, inactive: bool = False) -> ET.Element:
        return ET.fromstring(self.virsh("dumpxml", *(["--inactive"] if inactive else []), name))


def _pids_with_arg(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def vmlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmLab]:
    data_dir = tmp_path_factory.mktemp("vms")
    ramdisk = tmp_path_factory.mktemp("ramdisk")
    built = run_metal3("ramdisk", "build", "--output", str(ramdisk), timeout=900)  # cached
    assert built.returncode == 0, built.stderr
    before = root_namespace()
    started = time.monotonic()
    up = run_metal3(
        "lab", "up", "--vms", "2", "--ramdisk", str(ramdisk), "--data-dir", str(data_dir),
        timeout=300,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr + (data_dir / "supervisor.log").read_text()
    print(f"lab up --vms 2: {time.monotonic() - started:.1f} s")
    journal = Journal(data_dir / "journal.jsonl").entries()
    info = load_lab(data_dir)
    try:
        yield VmLab(info, data_dir, before, list(journal))
    finally:
        pids = [info.supervisor_pid] + [int(e["pid"]) for e in journal if e["kind"] == "process"]
        pids += _pids_with_arg(str(data_dir))  # qemu, sushy, vbmcd: all name files in DIR
        down = run_metal3("lab", "down", "--data-dir", str(data_dir))
        assert down.returncode == 0, down.stderr
        assert leftovers(data_dir, lab_prefixes(journal)) == []
        assert [pid for pid in pids if process_start_time(pid) is not None] == []
        assert _pids_with_arg(str(data_dir)) == []
        assert (
            info.namespace
            not in subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, check=True
            ).stdout
        )
        assert not (data_dir / "lab.json").exists()
        after = root_namespace()
        assert (after.addr, after.route, after.link) == (before.addr, before.route, before.link)


def creds(host: LabHost) -> Credentials:
    return Credentials(host.username, host.password)


def console_has(path: Path, *words: str, offset: int = 0) -> bool:
    try:
        text = path.read_bytes()[offset:].decode(errors="replace")
    except OSError:
        return False
    return all(word in text for word in words)


async def wait_console(path: Path, *words: str, offset: int = 0) -> None:
    import anyio

    deadline = time.monotonic() + BOOT_WAIT
    while not console_has(path, *words, offset=offset):
        assert time.monotonic() < deadline, f"{words} not on {path} after {BOOT_WAIT} s"
        await anyio.sleep(0.2)


def size_of(path: Path) -> int:
    return path.stat().st_size


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def qemu_rss(vmlab: VmLab, name: str) -> int:
    """The resident memory (bytes) of a running VM's QEMU, by the pid file libvirt keeps."""
    pid = int((vmlab.data_dir / "libvirt" / "run" / "qemu" / f"{name}.pid").read_text())
    assert "qemu-system-x86_64" in Path(f"/proc/{pid}/cmdline").read_text()
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        * 1024
    )


def ip_links(namespace: str) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "-j", "-n", namespace, "link"], capture_output=True, text=True, check=True
    ).stdout
    return list(json.loads(out))


def ipmitool(host: LabHost, *args: str) -> str:
    port = host.bmc_address.rsplit(":", 1)[1]
    done = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", port, "-U", host.username, "-E",
         *args],
        env={"IPMI_PASSWORD": host.password, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_lab_json_and_domains_match(vmlab: VmLab) -> None:
    info = vmlab.info
    assert [(h.name, h.kind) for h in info.hosts] == [
        ("vm-0", "redfish-virtualmedia"),
        ("vm-1", "ipmi"),
    ]
    assert info.libvirt_uri == f"qemu:///system?socket={vmlab.data_dir}/libvirt/run/libvirt-sock"
    names = vmlab.virsh("list", "--all", "--name").split()
    assert sorted(names) == ["vm-0", "vm-1"]
    for host in info.hosts:
        assert host.vm is not None
        xml = vmlab.xml(host.name, inactive=True)
        assert xml.get("type") == "qemu"  # TCG, never KVM
        assert xml.findtext("uuid") == host.bmc_address.rsplit("/", 1)[-1] or host.kind == "ipmi"
        memory_kib = int(xml.findtext("memory") or 0)
        assert memory_kib == host.vm.memory_mib * 1024 <= 2 * 1024 * 1024
        macs = [m.get("address") for m in xml.findall("devices/interface/mac")]
        assert macs == list(host.macs) == [host.boot_mac]
        bridges = [s.get("bridge") for s in xml.findall("devices/interface/source")]
        assert bridges == ["br0"]
        # The BIOS's boot disk (the guest's second) is libvirt's first, `vda`; PCI slots
        # keep the guest's order.
        assert host.vm.boot_disk == 1
        sources = [d.find("source").get("file") for d in xml.findall("devices/disk")]  # type: ignore[union-attr]
        assert sources == [host.disks[1], host.disks[0]]
        slots = [int(str(a.get("slot")), 16) for a in xml.findall("devices/disk/address")]
        assert slots == [vms.DISK_SLOT + 1, vms.DISK_SLOT]
        sizes = [
            int(vmlab.virsh("domblkinfo", host.name, target).split("\n")[0].split()[-1])
            for target in ("vdb", "vda")  # the guest's order
        ]
        assert sizes == list(host.vm.disk_sizes) == [os.stat(d).st_size for d in host.disks]
        assert sizes == [4 << 30, 6 << 30]
        serial = xml.find("devices/serial/source")
        assert serial is not None and serial.get("path") == host.vm.console_log
        assert vmlab.domstate(host.name) == "shut off"
        manifest = Path(host.manifest or "")
        assert host.bmc_address in manifest.read_text()
    assert os.stat(vmlab.data_dir / "lab.json").st_mode & 0o077 == 0


def test_daemons_run_in_the_lab_namespace_and_nothing_listens_outside_loopback(
    vmlab: VmLab,
) -> None:
    info = vmlab.info
    lab_pids = {
        int(p)
        for p in subprocess.run(
            ["ip", "netns", "pids", info.namespace], capture_output=True, text=True, check=True
        ).stdout.split()
    }
    daemons = {e["what"]: int(str(e["pid"])) for e in vmlab.journal if e["kind"] == "process"}
    assert daemons["libvirtd"] in lab_pids
    assert daemons["virtlogd"] in lab_pids
    # The BMCs serve the operator on 127.0.0.1 in the root namespace, and nothing else.
    bmc_pids = [pid for what, pid in daemons.items() if what not in ("libvirtd", "virtlogd")]
    bmc_pids += [
        pid for e in vmlab.journal if e.get("what") == "vbmc server" for pid in [int(str(e["pid"]))]
    ]
    sockets = root_namespace_sockets([info.supervisor_pid, *bmc_pids])
    assert {s[0] for s in sockets} >= {"tcp", "udp"}  # Redfish (TCP) and IPMI (UDP) at least
    assert [s for s in sockets if not s[2].startswith("127.0.0.1:")] == []
    # libvirtd and virtlogd listen on no network socket at all (UNIX sockets only).
    ss = subprocess.run(
        ["ip", "netns", "exec", info.namespace, "ss", "-ltunpH"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "libvirtd" not in ss and "virtlogd" not in ss and "qemu" not in ss
    subnet = ipaddress.ip_network(info.subnet)
    after = root_namespace()
    assert (after.addr, after.route, after.link) == (
        vmlab.before.addr,
        vmlab.before.route,
        vmlab.before.link,
    )
    for route in after.route:
        dst = route.get("dst", "default")
        if dst != "default":
            assert not ipaddress.ip_network(dst, strict=False).overlaps(subnet), route


@pytest.mark.anyio
async def test_redfish_power_boot_device_and_console(vmlab: VmLab) -> None:
    host = vmlab.info.host("vm-0")
    assert host.vm is not None
    console = Path(host.vm.console_log)
    offset = size_of(console)
    async with connect(host.bmc_address, creds(host)) as bmc:
        await bmc.validate()
        assert await bmc.power_state() == PowerState.OFF
        await bmc.set_boot_device(BootDevice.DISK, persistent=True)
        boot = [
            (e.tag, e.find("target").get("dev") if e.find("target") is not None else "")  # type: ignore[union-attr]
            for e in vmlab.xml("vm-0", inactive=True).findall("devices/*")
            if e.find("boot") is not None and e.find("boot").get("order") == "1"  # type: ignore[union-attr]
        ]
        assert boot == [("disk", "vda")]
        assert (await bmc.boot_settings()).device == BootDevice.DISK
        await bmc.set_boot_device(BootDevice.PXE, persistent=True)
        assert (await bmc.boot_settings()).device == BootDevice.PXE
        started = time.monotonic()
        await bmc.power_on(wait=60)
        assert vmlab.domstate("vm-0") == "running"
        try:
            await wait_console(console, "SeaBIOS", "iPXE", host.boot_mac, offset=offset)
            print(f"vm-0: power on to iPXE on the console: {time.monotonic() - started:.1f} s")
            rss = qemu_rss(vmlab, "vm-0")
            print(f"vm-0: QEMU resident memory in firmware: {rss / 2**20:.0f} MiB")
            assert 0 < rss < 2 << 30
            # its tap is on the lab bridge, inside the lab namespace
            links = ip_links(vmlab.info.namespace)
            taps = [link for link in links if link.get("master") == "br0"]
            assert len(taps) == 1
            status = run_metal3("lab", "status", "--data-dir", str(vmlab.data_dir), "--json")
            assert status.returncode == 0, status.stderr
            vm = next(h for h in json.loads(status.stdout)["hosts"] if h["name"] == "vm-0")["vm"]
            assert vm["state"] == "running"
            assert any("iPXE" in line or host.boot_mac in line for line in vm["console_tail"])
            text = run_metal3("lab", "status", "--data-dir", str(vmlab.data_dir))
            assert "vm-0  redfish-virtualmedia  running" in text.stdout
            assert "vm-0 console" in text.stdout
        finally:
            await bmc.power_off(soft_wait=None, wait=60)
        assert await bmc.power_state() == PowerState.OFF
    assert vmlab.domstate("vm-0") == "shut off"


@pytest.mark.anyio
async def test_redfish_virtual_media_reaches_the_domain(vmlab: VmLab) -> None:
    host = vmlab.info.host("vm-0")
    iso = vmlab.data_dir / "images" / "agent.iso"
    async with connect(host.bmc_address, creds(host)) as bmc:
        await bmc.insert_media(vmlab.info.agent_iso_url)
        state = await bmc.media_state()
        assert state.inserted
        cdroms = [d for d in vmlab.xml("vm-0", inactive=True).findall("devices/disk")
                  if d.get("device") == "cdrom"]  # fmt: skip
        assert len(cdroms) == 1
        source = cdroms[0].find("source")
        assert source is not None
        uploaded = Path(str(source.get("file")))
        assert uploaded.parent == vmlab.data_dir / "bmc" / "media"
        assert same_bytes(uploaded, iso)
        await bmc.eject_media()
        assert not (await bmc.media_state()).inserted
        cdroms = [d for d in vmlab.xml("vm-0", inactive=True).findall("devices/disk")
                  if d.get("device") == "cdrom"]  # fmt: skip
        assert cdroms == []


@pytest.mark.anyio
async def test_ipmi_power_and_boot_device_through_virtualbmc(vmlab: VmLab) -> None:
    host = vmlab.info.host("vm-1")
    assert host.vm is not None
    assert "Chassis Power is off" in ipmitool(host, "power", "status")
    console = Path(host.vm.console_log)
    offset = size_of(console)
    async with connect(host.bmc_address, creds(host)) as bmc:
        await bmc.validate()
        await bmc.set_boot_device(BootDevice.DISK, persistent=True)
        os_boot = vmlab.xml("vm-1", inactive=True).find("os/boot")
        assert os_boot is not None and os_boot.get("dev") == "hd"
        assert "Hard-Drive" in ipmitool(host, "chassis", "bootparam", "get", "5")
        await bmc.set_boot_device(BootDevice.PXE, persistent=True)
        os_boot = vmlab.xml("vm-1", inactive=True).find("os/boot")
        assert os_boot is not None and os_boot.get("dev") == "network"
        assert "PXE" in ipmitool(host, "chassis", "bootparam", "get", "5")
        await bmc.power_on(wait=60)
        try:
            assert vmlab.domstate("vm-1") == "running"
            assert "Chassis Power is on" in ipmitool(host, "power", "status")
            await wait_console(console, "SeaBIOS", "iPXE", host.boot_mac, offset=offset)
        finally:
            await bmc.power_off(soft_wait=None, wait=60)
        assert vmlab.domstate("vm-1") == "shut off"
        assert "Chassis Power is off" in ipmitool(host, "power", "status")


@pytest.mark.anyio
async def test_redfish_refuses_wrong_credentials(vmlab: VmLab) -> None:
    host = vmlab.info.host("vm-0")
    with pytest.raises(BMCAuthError):
        async with connect(host.bmc_address, Credentials(host.username, "wrong")) as bmc:
            await bmc.validate()


def test_vm_plans_and_refusals() -> None:
    from metal3.lab.config import LabConfig, LabConfigError, plan_hosts

    plans = plan_hosts(LabConfig(hosts=0, vms=3))
    assert [(p.name, p.kind, p.profile.name) for p in plans] == [
        ("vm-0", "redfish-virtualmedia", "vm"),
        ("vm-1", "redfish-virtualmedia", "vm"),
        ("vm-2", "ipmi", "vm"),
    ]
    assert [p.macs() for p in plans] == [("02:6d:33:00:00:00",), ("02:6d:33:00:01:00",),
                                         ("02:6d:33:00:02:00",)]  # fmt: skip
    kinds = [p.kind for p in plan_hosts(LabConfig(hosts=0, vms=3, virtual_media_hosts=1,
                                                  ipmi_hosts=1))]  # fmt: skip
    assert kinds == ["redfish", "redfish-virtualmedia", "ipmi"]
    for bad in (
        LabConfig(hosts=2, vms=1),
        LabConfig(hosts=0, unregistered=1, vms=1),
        LabConfig(hosts=0, vms=1, profile="small"),
        LabConfig(hosts=0, vms=2, ipmi_hosts=3),
        LabConfig(hosts=0, vms=-1),
    ):
        with pytest.raises(LabConfigError):
            bad.check()
    refused = run_metal3("lab", "up", "--vms", "1", "--hosts", "1", "--data-dir", "/nonexistent")
    assert refused.returncode == 2 and "--vms" in refused.stderr


def test_domain_xml_and_console_tail(tmp_path: Path) -> None:
    spec = vms.VmSpec(
        name="vm-7",
        uuid="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        memory_mib=1024,
        cpus=1,
        mac="02:6d:33:00:07:00",
        bridge="br0",
        disks=((tmp_path / "disk0", 4 << 30), (tmp_path / "disk1", 6 << 30)),
        console_log=tmp_path / "console.log",
        boot_disk=1,
    )
    xml = ET.fromstring(vms.domain_xml(spec))
    assert xml.get("type") == "qemu"
    assert xml.find("cpu") is None  # TCG's default CPU: never `host` (it aborts here)
    order = {
        (e.tag, str(e.get("type"))): e.find("boot").get("order")  # type: ignore[union-attr]
        for e in xml.find("devices")  # type: ignore[union-attr]
        if e.find("boot") is not None
    }
    assert order == {("interface", "bridge"): "1", ("disk", "file"): "2"}
    # The boot disk first (the BMCs give the first disk element the boot priority), as `vda`;
    # its PCI slot after the other's keeps it the guest's second disk.
    disks = xml.findall("devices/disk")
    assert [d.find("source").get("file") for d in disks] == [  # type: ignore[union-attr]
        str(tmp_path / "disk1"),
        str(tmp_path / "disk0"),
    ]
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]  # type: ignore[union-attr]
    assert disks[0].find("boot") is not None and disks[1].find("boot") is None
    assert [d.find("address").get("slot") for d in disks] == ["0x11", "0x10"]  # type: ignore[union-attr]
    assert [s.text for s in xml.findall("devices/disk/serial")] == [
        profiles.disk_serial("vm-7", 1),
        profiles.disk_serial("vm-7", 0),
    ]
    vms.make_disks(spec)
    assert [os.stat(p).st_size for p, _ in spec.disks] == [4 << 30, 6 << 30]
    assert all(os.stat(p).st_blocks == 0 for p, _ in spec.disks)
    spec.console_log.write_bytes(
        b"\x1b[2J\x1b[0mSeaBIOS (version 1.16.3)\r\n\r\n\x1b[0;1miPXE 1.0.0\x1b[0m -- boot\r\n"
    )
    assert vms.console_tail(spec.console_log) == ["SeaBIOS (version 1.16.3)", "iPXE 1.0.0 -- boot"]
    assert vms.console_tail(tmp_path / "missing.log") == []
    with spec.console_log.open("ab") as console:
        console.write(b"Probing EDD (edd=off to disable)... o")  # still being written
    assert vms.console_tail(spec.console_log, lines=1)[-1].startswith("Probing EDD")
    assert vms.console_tail(spec.console_log, lines=1, complete=True) == ["iPXE 1.0.0 -- boot"]
    with spec.console_log.open("ab") as console:
        console.write(b"k\r\n")
    # What the test OS reported counts for the current boot only (after the last BIOS banner).
    assert vms.os_report(spec.console_log) is None
    with spec.console_log.open("ab") as console:
        console.write(b"[  OK  ] Started\r\nmetal3-os-image: status=done datasource=ConfigDrive "
                      b"hostname=vm-7-os user-data-sha256=ab12\r\nvm-7-os login: ")  # fmt: skip
    report = vms.os_report(spec.console_log)
    assert report is not None
    assert (report["status"], report["hostname"], report["user-data-sha256"]) == (
        "done", "vm-7-os", "ab12")  # fmt: skip
    with spec.console_log.open("ab") as console:
        console.write(b"\r\nSeaBIOS (version 1.16.3)\r\niPXE 1.0.0\r\n")  # powered on again
    assert vms.os_report(spec.console_log) is None
    assert vms.os_report(tmp_path / "missing.log") is None


def test_down_after_a_killed_supervisor_removes_vms_daemons_and_bmcs(tmp_path: Path) -> None:
    data_dir = tmp_path / "killed"
    up = run_metal3("lab", "up", "--vms", "2", "--data-dir", str(data_dir), timeout=300)
    assert up.returncode == 0, up.stderr + (data_dir / "supervisor.log").read_text()
    info = load_lab(data_dir)
    journal = Journal(data_dir / "journal.jsonl").entries()
    lab = VmLab(info, data_dir, root_namespace(), list(journal))
    lab.virsh("start", "vm-1")  # a running QEMU, behind the BMC's back
    assert lab.domstate("vm-1") == "running"
    running = _pids_with_arg(str(data_dir))  # QEMU, sushy-tools, vbmcd and its servers
    running += [int(e["pid"]) for e in journal if e["kind"] == "process"]  # libvirtd, virtlogd
    whats = {str(e.get("what")) for e in journal if e["kind"] == "process"}
    assert {"libvirtd", "virtlogd", "sushy-emulator (libvirt)", "vbmcd", "vbmc server"} <= whats
    os.kill(info.supervisor_pid, 9)
    down = run_metal3("lab", "down", "--data-dir", str(data_dir))
    assert down.returncode == 0, down.stderr
    assert "qemu" in down.stdout or "process in" in down.stdout
    assert [pid for pid in running if process_start_time(pid) is not None] == []
    assert _pids_with_arg(str(data_dir)) == []
    assert leftovers(data_dir, lab_prefixes(journal)) == []
    assert (
        info.namespace
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )
