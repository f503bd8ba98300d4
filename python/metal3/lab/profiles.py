"""Hardware profiles of the lab's hosts: CPU, memory, disks and NICs.

Profiles differ where root-device hints look (size, rotational, model, vendor, serial, WWN,
transport), so hints have something to choose. Disk sizes are small (sparse files: they cost
no space until written) so that anything that reads a whole disk stays quick in CI; the
smallest disk of each profile is at least 4 GiB, so that each has a default root device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

GiB = 1 << 30


@dataclass(frozen=True)
class DiskSpec:
    size: int  # bytes
    model: str
    vendor: str
    rotational: bool
    tran: str  # sata | sas | nvme | virtio (VMs)
    physical_sector: int = 512

    @property
    def redfish_protocol(self) -> str:
        return {"sata": "SATA", "sas": "SAS", "nvme": "NVMe", "virtio": "PCIe"}[self.tran]


@dataclass(frozen=True)
class Profile:
    name: str
    vendor: str
    product: str
    cpu_model: str
    cpus: int
    sockets: int
    cpu_max_mhz: int
    dimm_gib: tuple[int, ...]
    disks: tuple[DiskSpec, ...]
    nics: int
    uefi: bool = True
    #: the disk (index in `disks`) the firmware boots when told to boot from disk: its first
    #: in hard-disk priority, as set in a server's BIOS setup
    boot_disk: int = 0

    @property
    def memory_mib(self) -> int:
        return sum(self.dimm_gib) * 1024

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vendor": self.vendor,
            "product": self.product,
            "cpu": {
                "model": self.cpu_model,
                "count": self.cpus,
                "sockets": self.sockets,
                "max_mhz": self.cpu_max_mhz,
            },
            "memory_mib": self.memory_mib,
            "dimm_gib": list(self.dimm_gib),
            "disks": [
                {
                    "size": d.size,
                    "model": d.model,
                    "vendor": d.vendor,
                    "rotational": d.rotational,
                    "tran": d.tran,
                }
                for d in self.disks
            ],
            "nics": self.nics,
            "boot_mode": "UEFI" if self.uefi else "legacy",
        }


_SSD = DiskSpec(6 * GiB, "LAB SSD 6G", "ATA", rotational=False, tran="sata")
_HDD = DiskSpec(8 * GiB, "LAB HDD 8G", "ATA", rotational=True, tran="sata", physical_sector=4096)

PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            name="small",
            vendor="Metal3 Lab",
            product="LS-100",
            cpu_model="Intel(R) Xeon(R) E-2234 CPU @ 3.60GHz",
            cpus=4,
            sockets=1,
            cpu_max_mhz=4800,
            dimm_gib=(8, 8),
            disks=(_SSD, _HDD),
            nics=1,
        ),
        Profile(
            name="medium",
            vendor="Metal3 Lab",
            product="LM-200",
            cpu_model="Intel(R) Xeon(R) Silver 4214 CPU @ 2.20GHz",
            cpus=8,
            sockets=2,
            cpu_max_mhz=3200,
            dimm_gib=(16, 16, 16, 16),
            disks=(
                DiskSpec(5 * GiB, "LAB NVMe 5G", "", rotational=False, tran="nvme"),
                DiskSpec(10 * GiB, "LAB SSD 10G", "ATA", rotational=False, tran="sata"),
            ),
            nics=2,
        ),
        Profile(
            name="storage",
            vendor="Metal3 Lab",
            product="LX-400",
            cpu_model="AMD EPYC 7302P 16-Core Processor",
            cpus=8,
            sockets=1,
            cpu_max_mhz=3000,
            dimm_gib=(16, 16),
            disks=(
                DiskSpec(4 * GiB, "LAB SSD 4G", "ATA", rotational=False, tran="sata"),
                DiskSpec(
                    12 * GiB,
                    "LAB SAS 12G",
                    "SEAGATE",
                    rotational=True,
                    tran="sas",
                    physical_sector=4096,
                ),
                DiskSpec(
                    12 * GiB,
                    "LAB SAS 12G",
                    "SEAGATE",
                    rotational=True,
                    tran="sas",
                    physical_sector=4096,
                ),
                DiskSpec(
                    16 * GiB,
                    "LAB SAS 16G",
                    "SEAGATE",
                    rotational=True,
                    tran="sas",
                    physical_sector=4096,
                ),
            ),
            nics=2,
            uefi=False,
        ),
    )
}
"""The profiles by name; hosts take them in this order, round robin, unless told one."""

VM_PROFILE = Profile(
    name="vm",
    vendor="QEMU",
    product="Standard PC (Q35 + ICH9, 2009)",
    cpu_model="QEMU Virtual CPU",
    cpus=1,
    sockets=1,
    cpu_max_mhz=0,
    dimm_gib=(1,),
    disks=(
        DiskSpec(4 * GiB, "QEMU virtio 4G", "0x1af4", rotational=True, tran="virtio"),
        DiskSpec(6 * GiB, "QEMU virtio 6G", "0x1af4", rotational=True, tran="virtio"),
    ),
    nics=1,
    uefi=False,
    boot_disk=1,
)
"""The one profile of `lab up --vms` hosts (not in PROFILES: process hosts never take it):
a TCG virtual machine of 1 vCPU and 1 GiB (TCG is CPU-heavy and the machines are shared),
two virtio disks of different sizes (raw sparse files) and one virtio NIC, booting by BIOS.

The BIOS boots the second disk (6 GiB, /dev/vdb), as a server set up to boot its OS disk:
SeaBIOS, told by a BMC to boot from disk, tries its first hard disk only ("No bootable
device" otherwise), and the VM's disk priority puts the second one first. Ironic's default
root device (the smallest disk of at least 4 GiB) is the first disk, so only root-device
hints put an image where the VM boots it."""


def profile_for(index: int, chosen: str | None = None) -> Profile:
    if chosen is not None:
        return PROFILES[chosen]
    names = list(PROFILES)
    return PROFILES[names[index % len(names)]]


def disk_serial(host: str, disk: int) -> str:
    """A stable serial number for disk `disk` of `host` (unique across hosts)."""
    return "LAB" + hashlib.sha256(f"{host}/{disk}".encode()).hexdigest()[:10].upper()


def disk_wwn(host: str, disk: int) -> str:
    """A stable NAA-5 style WWN for disk `disk` of `host`."""
    return "0x5000c500" + hashlib.sha256(f"wwn:{host}/{disk}".encode()).hexdigest()[:8]


def system_serial(host: str) -> str:
    return "LABSYS" + hashlib.sha256(f"system:{host}".encode()).hexdigest()[:8].upper()
