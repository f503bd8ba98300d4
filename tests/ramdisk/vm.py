"""A TCG virtual machine booting the agent ramdisk on a network of its own: a namespace with a
bridge (subnet chosen to overlap no route of this machine), a tap for the VM's NIC, and
dnsmasq answering DHCP on the bridge only. Nothing is made in the machine's own namespace."""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from metal3.lab.network import (
    BRIDGE,
    LabNetwork,
    choose_subnet,
    create_lab_namespace,
    delete_namespace,
    root_networks,
    run_ip,
)

TAP = "tap0"
DHCP_FIRST = 100  # leases from .100 to .150
DHCP_LAST = 150


@dataclass(frozen=True)
class Network:
    lab: LabNetwork
    leases: Path

    @property
    def namespace(self) -> str:
        return self.lab.namespace

    def in_dhcp_range(self, address: str) -> bool:
        offset = int(address.split(".")[-1])
        return address.startswith(self.lab.gateway.rsplit(".", 1)[0] + ".") and (
            DHCP_FIRST <= offset <= DHCP_LAST
        )


@contextlib.contextmanager
def vm_network(folder: Path) -> Iterator[Network]:
    """The namespace, bridge, tap and DHCP server; all removed afterwards."""
    lab = LabNetwork(f"m3rd-{random.randrange(16**6):06x}", choose_subnet(root_networks()))
    base = lab.gateway.rsplit(".", 1)[0]
    leases = folder / "dnsmasq.leases"
    create_lab_namespace(lab)
    dnsmasq: subprocess.Popen[bytes] | None = None
    try:
        run_ip(
            ["-n", lab.namespace],
            batch=[
                f"tuntap add dev {TAP} mode tap",
                f"link set {TAP} master {BRIDGE}",
                f"link set {TAP} up",
            ],
        )
        log = (folder / "dnsmasq.log").open("wb")
        dnsmasq = subprocess.Popen(
            [
                "ip", "netns", "exec", lab.namespace, "dnsmasq", "--keep-in-foreground",
                "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--port=0",
                f"--interface={BRIDGE}", "--bind-interfaces", "--user=root", "--pid-file=",
                f"--dhcp-range={base}.{DHCP_FIRST},{base}.{DHCP_LAST},255.255.255.0,1h",
                f"--dhcp-leasefile={leases}", "--log-dhcp", "--log-facility=-",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        yield Network(lab, leases)
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
        delete_namespace(lab.namespace)


@dataclass(frozen=True)
class Disk:
    path: Path
    size: int
    serial: str


@dataclass
class VirtualMachine:
    process: subprocess.Popen[bytes]
    console: Path
    mac: str
    system_uuid: str
    disks: Sequence[Disk]
    started: float  # time.monotonic() when qemu was started

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def random_mac() -> str:
    return "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def make_disks(folder: Path, sizes_mib: Sequence[int]) -> list[Disk]:
    disks = []
    for index, size in enumerate(sizes_mib):
        path = folder / f"disk{index}.img"
        with path.open("wb") as handle:
            handle.truncate(size << 20)
        disks.append(Disk(path, size << 20, f"M3RD{index}{random.randrange(16**6):06X}"))
    return disks


def qemu_command(
    *,
    kernel: Path,
    initramfs: Path,
    append: str,
    console: Path,
    mac: str,
    system_uuid: str,
    disks: Sequence[Disk],
) -> list[str]:
    """TCG always (never /dev/kvm), no default devices, the serial console into a file."""
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-no-reboot",
        "-machine", "pc", "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none",
        "-serial", f"file:{console}", "-uuid", system_uuid,
        "-kernel", str(kernel), "-initrd", str(initramfs), "-append", append,
        "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
    ]  # fmt: skip
    for index, disk in enumerate(disks):
        argv += [
            "-drive", f"if=none,id=d{index},file={disk.path},format=raw",
            "-device", f"virtio-blk-pci,drive=d{index},serial={disk.serial}",
        ]  # fmt: skip
    return argv


def boot(
    network: Network, folder: Path, *, kernel: Path, initramfs: Path, append: str
) -> VirtualMachine:
    """Start the VM inside the network's namespace (its tap is there)."""
    mac = random_mac()
    system_uuid = str(uuid.uuid4())
    disks = make_disks(folder, [1024, 1536])
    console = folder / "console.log"
    argv = qemu_command(
        kernel=kernel,
        initramfs=initramfs,
        append=append,
        console=console,
        mac=mac,
        system_uuid=system_uuid,
        disks=disks,
    )
    out = (folder / "qemu.log").open("wb")
    process = subprocess.Popen(
        ["ip", "netns", "exec", network.namespace, *argv], stdout=out, stderr=subprocess.STDOUT
    )
    return VirtualMachine(process, console, mac, system_uuid, disks, time.monotonic())
