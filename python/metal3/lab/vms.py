"""The lab's virtual machines (`metal3 lab up --vms N`): their libvirt domains, disks and
serial consoles.

Each VM is a `type='qemu'` domain (TCG, never KVM: `/dev/kvm` here is a hypervisor that stock
kernels run slower under, and `-cpu host` aborts) with the VM profile (see
`metal3.lab.profiles.VM_PROFILE`): its disks are raw sparse files `DIR/hosts/NAME/diskN`
(virtio, with stable serial numbers), its one virtio NIC has the host's stable MAC on the lab
bridge, its BIOS (SeaBIOS) and serial console write to `DIR/hosts/NAME/console.log` (appended
across boots), and it boots from the network first, then its boot disk, until its BMC sets
another boot device.

Which disk the BIOS boots: both BMCs give the boot priority to the domain's first disk
element (sushy-tools numbers the disks' boot order in the definition's order; virtualbmc sets
`<os><boot dev='hd'/>`, for which libvirt gives the first disk bootindex 1), and libvirt keeps
disks ordered by target name. So the boot disk is defined first, as target `vda`, and every
disk has a fixed PCI slot in the guest's order (`DISK_SLOT` + its index): the guest names its
disks by PCI order, so the boot disk of a profile whose `boot_disk` is 1 is the guest's
/dev/vdb although libvirt calls it `vda`.

The domain's UUID is the host's system UUID (so SMBIOS, Redfish and the agent all see the same
one); its name is the host's name.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from metal3.lab.libvirtd import LibvirtError, virsh
from metal3.lab.profiles import disk_serial

EMULATOR = "/usr/bin/qemu-system-x86_64"
MACHINE = "q35"  # sushy-tools puts virtual media CDs on its SATA controller
DISK_SLOT = 0x10  # disk N sits at 0000:00:(DISK_SLOT + N).0, on the root complex


@dataclass(frozen=True)
class VmSpec:
    name: str
    uuid: str
    memory_mib: int
    cpus: int
    mac: str
    bridge: str
    disks: tuple[tuple[Path, int], ...]  # (raw file, size in bytes), in the guest's order
    console_log: Path
    boot_disk: int = 0  # the disk (index in `disks`) the BIOS boots when told "disk"


def domain_xml(vm: VmSpec) -> str:
    """The libvirt domain definition of `vm`."""
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = vm.name
    ET.SubElement(domain, "uuid").text = vm.uuid
    ET.SubElement(domain, "memory", unit="MiB").text = str(vm.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(vm.cpus)
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch="x86_64", machine=MACHINE).text = "hvm"
    ET.SubElement(os_element, "bios", useserial="yes")  # SeaBIOS writes to the serial port
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", offset="utc")
    for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "destroy")):
        ET.SubElement(domain, f"on_{event}").text = action
    devices = ET.SubElement(domain, "devices")
    ET.SubElement(devices, "emulator").text = EMULATOR
    nic = ET.SubElement(devices, "interface", type="bridge")
    ET.SubElement(nic, "mac", address=vm.mac)
    ET.SubElement(nic, "source", bridge=vm.bridge)
    ET.SubElement(nic, "model", type="virtio")
    ET.SubElement(nic, "boot", order="1")
    others = [index for index in range(len(vm.disks)) if index != vm.boot_disk]
    for position, index in enumerate([vm.boot_disk, *others]):  # the boot disk first
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="raw", cache="unsafe")
        ET.SubElement(disk, "source", file=str(vm.disks[index][0]))
        ET.SubElement(disk, "target", dev=f"vd{chr(ord('a') + position)}", bus="virtio")
        ET.SubElement(disk, "serial").text = disk_serial(vm.name, index)
        if position == 0:
            ET.SubElement(disk, "boot", order="2")
        slot = f"0x{DISK_SLOT + index:02x}"
        ET.SubElement(
            disk, "address", type="pci", domain="0x0000", bus="0x00", slot=slot, function="0x0"
        )
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(vm.console_log), append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(ET.SubElement(devices, "video"), "model", type="none")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def make_disks(vm: VmSpec) -> None:
    """Each disk a new sparse file of its size (reads as zeros, takes no space until written)."""
    for path, size in vm.disks:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.truncate(size)


def define(uri: str, vm: VmSpec, xml_path: Path) -> None:
    """Write the domain XML to `xml_path` and define the domain from it (shut off)."""
    xml_path.write_text(domain_xml(vm))
    virsh(uri, "define", str(xml_path))


def state(uri: str, name: str) -> str:
    """The domain's state as virsh words it (`running`, `shut off`, ...); `unknown` when
    libvirt cannot be asked."""
    try:
        return virsh(uri, "domstate", name, timeout=10).strip() or "unknown"
    except LibvirtError:
        return "unknown"


def destroy_all(uri: str) -> list[str]:
    """Power off (destroy) every running domain; their names."""
    names = [line.strip() for line in virsh(uri, "list", "--name").splitlines() if line.strip()]
    for name in names:
        virsh(uri, "destroy", name)
    return names


FIRMWARE_BANNER = "SeaBIOS (version"  # printed at every power on and reset


def os_report(path: Path, max_bytes: int = 1 << 20) -> dict[str, str] | None:
    """What the test OS (`metal3 lab os-image`) reported on the console in the VM's current
    boot, once cloud-init is done (its `metal3-os-image:` line: status, datasource, hostname,
    user-data-sha256, ...); None before that, or when the VM booted something else since."""
    from metal3.lab.osimage import read_report

    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    report = read_report(text.rpartition(FIRMWARE_BANNER)[2])
    return dict(report.fields) if report is not None else None


def console_tail(
    path: Path, lines: int = 5, max_bytes: int = 16384, *, complete: bool = False
) -> list[str]:
    """The last `lines` non-empty lines of a console log, control sequences removed;
    `complete`: leave out a last line still being written (no line end yet)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            raw = handle.read()
    except OSError:
        return []
    text = raw.decode("utf-8", errors="replace")
    if complete:
        text = text[: max(text.rfind("\n"), text.rfind("\r")) + 1]
    cleaned = [_printable(line) for line in text.replace("\r", "\n").split("\n")]
    return [line for line in cleaned if line.strip()][-lines:]


def _printable(line: str) -> str:
    """`line` without ANSI escape sequences and other control characters."""
    out = []
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\x1b":
            index += 1
            if index < len(line) and line[index] == "[":
                index += 1
                while index < len(line) and not ("@" <= line[index] <= "~"):
                    index += 1
            index += 1
            continue
        if char >= " " or char == "\t":
            out.append(char)
        index += 1
    return "".join(out).rstrip()
