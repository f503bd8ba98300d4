"""A lab host's recorded procfs/sysfs tree: what its agent reads its inventory from (`--root`).

The tree has the layout `metal3.agent.inventory.sysroot` reads (files at their procfs/sysfs
paths, tool outputs under `.tools/`). CPU, memory and SMBIOS strings come from the host's
profile; the disks are the host's real loop devices (their real names and sizes) with the
profile's model, vendor, serial, WWN, rotational flag and transport; the NICs are the host's
real veths, with `ip -d -j addr show` recorded inside the host's namespace.

`proc/cmdline` is rewritten at every boot (`write_cmdline`): a network boot passes BOOTIF, as
PXE does, a virtual-media boot does not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from metal3.lab.profiles import Profile, disk_serial, disk_wwn, system_serial


@dataclass(frozen=True)
class TreeDisk:
    device: str  # /dev/loopN
    size: int
    backing: Path


@dataclass(frozen=True)
class TreeNic:
    name: str
    mac: str


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_tree(
    root: Path,
    *,
    host: str,
    system_uuid: str,
    profile: Profile,
    disks: Sequence[TreeDisk],
    nics: Sequence[TreeNic],
    ip_addr_json: str,
) -> None:
    """Write the whole tree (a fresh directory) for `host`."""
    root.mkdir(parents=True, exist_ok=True)
    _cpu(root, profile)
    _memory(root, profile)
    _system(root, host, system_uuid, profile)
    _disks(root, host, profile, disks)
    _nics(root, nics, ip_addr_json)
    _write(root, "proc/sys/kernel/hostname", f"{host}\n")
    write_cmdline(root, "")


def write_cmdline(root: Path, cmdline: str) -> None:
    """The kernel command line of the current boot."""
    _write(root, "proc/cmdline", f"BOOT_IMAGE=/metal3-agent/vmlinuz {cmdline}".strip() + "\n")


def _cpu(root: Path, profile: Profile) -> None:
    blocks = []
    per_socket = max(1, profile.cpus // profile.sockets)
    for cpu in range(profile.cpus):
        package = cpu // per_socket
        blocks.append(
            "\n".join(
                [
                    f"processor\t: {cpu}",
                    "vendor_id\t: "
                    + ("AuthenticAMD" if "AMD" in profile.cpu_model else "GenuineIntel"),
                    f"model name\t: {profile.cpu_model}",
                    f"cpu MHz\t\t: {profile.cpu_max_mhz * 0.6:.3f}",
                    f"physical id\t: {package}",
                    f"siblings\t: {per_socket}",
                    f"core id\t\t: {cpu % per_socket}",
                    f"cpu cores\t: {per_socket}",
                    "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov "
                    "pat pse36 clflush mmx fxsr sse sse2 ht syscall nx lm constant_tsc "
                    "nopl pni ssse3 sse4_1 sse4_2 x2apic aes avx avx2",
                ]
            )
        )
        _write(
            root,
            f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id",
            f"{package}\n",
        )
        _write(
            root,
            f"sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq",
            f"{profile.cpu_max_mhz * 1000}\n",
        )
    _write(root, "proc/cpuinfo", "\n\n".join(blocks) + "\n\n")
    _write(root, "proc/sys/kernel/arch", "x86_64\n")


def _memory(root: Path, profile: Profile) -> None:
    # The kernel sees a little less than is installed (firmware and kernel reservations).
    total_kib = profile.memory_mib * 1024 * 97 // 100
    _write(
        root,
        "proc/meminfo",
        f"MemTotal:       {total_kib} kB\nMemFree:        {total_kib * 9 // 10} kB\n"
        f"MemAvailable:   {total_kib * 9 // 10} kB\n",
    )
    _write(root, "sys/firmware/dmi/tables/DMI", "")
    devices = [
        "# dmidecode 3.4",
        "Getting SMBIOS data from sysfs.",
        "SMBIOS 3.2.0 present.",
        "",
    ]
    for slot, gib in enumerate(profile.dimm_gib):
        devices += [
            f"Handle 0x11{slot:02X}, DMI type 17, 84 bytes",
            "Memory Device",
            "\tTotal Width: 72 bits",
            "\tData Width: 64 bits",
            f"\tSize: {gib} GB",
            "\tForm Factor: DIMM",
            f"\tLocator: DIMM{slot}",
            "\tType: DDR4",
            "\tSpeed: 2933 MT/s",
            "",
        ]
    _write(root, ".tools/dmidecode-t17.txt", "\n".join(devices))


def _system(root: Path, host: str, system_uuid: str, profile: Profile) -> None:
    strings = {
        "sys_vendor": profile.vendor,
        "product_name": profile.product,
        "product_serial": system_serial(host),
        "product_uuid": system_uuid,
        "bios_vendor": "Metal3 Lab Firmware",
        "bios_version": "1.4.2",
        "bios_date": "03/14/2024",
    }
    for name, value in strings.items():
        _write(root, f"sys/class/dmi/id/{name}", f"{value}\n")
    if profile.uefi:
        _write(root, "sys/firmware/efi/fw_platform_size", "64\n")


def _disks(root: Path, host: str, profile: Profile, disks: Sequence[TreeDisk]) -> None:
    entries = []
    for index, (disk, spec) in enumerate(zip(disks, profile.disks, strict=True)):
        kname = disk.device.removeprefix("/dev/")
        serial, wwn = disk_serial(host, index), disk_wwn(host, index)
        entries.append(
            {
                "kname": kname,
                "model": spec.model,
                "size": disk.size,
                "rota": spec.rotational,
                "type": "loop",
                "uuid": None,
                "partuuid": None,
                "serial": serial,
                "wwn": wwn,
                "vendor": spec.vendor or None,
                "hctl": None,
                "tran": spec.tran,
                "log-sec": 512,
                "phy-sec": spec.physical_sector,
            }
        )
        _write(root, f"sys/block/{kname}/loop/backing_file", f"{disk.backing}\n")
        if spec.vendor:
            _write(root, f"sys/block/{kname}/device/vendor", f"{spec.vendor}\n")
        _write(
            root,
            f".tools/udevadm/{kname}.txt",
            "\n".join(
                [
                    f"DEVNAME={disk.device}",
                    "DEVTYPE=disk",
                    "SUBSYSTEM=block",
                    f"ID_MODEL={spec.model.replace(' ', '_')}",
                    f"ID_SERIAL={spec.model.replace(' ', '_')}_{serial}",
                    f"ID_SERIAL_SHORT={serial}",
                    f"ID_WWN={wwn}",
                    f"ID_WWN_WITH_EXTENSION={wwn}",
                ]
            )
            + "\n",
        )
    _write(root, ".tools/lsblk.json", json.dumps({"blockdevices": entries}, indent=3) + "\n")


def _nics(root: Path, nics: Sequence[TreeNic], ip_addr_json: str) -> None:
    for nic in nics:
        base = f"sys/class/net/{nic.name}"
        _write(root, f"{base}/address", f"{nic.mac}\n")
        _write(root, f"{base}/carrier", "1\n")
        _write(root, f"{base}/type", "1\n")
        _write(root, f"{base}/speed", "10000\n")
        _write(root, f"{base}/operstate", "up\n")
        _write(root, f".tools/ethtool-i/{nic.name}.txt", "driver: veth\nversion: 1.0\n")
    _write(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n")
    _write(root, "sys/class/net/lo/type", "772\n")
    _write(root, ".tools/ip-addr.json", ip_addr_json)
