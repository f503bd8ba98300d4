"""Out-of-band inspection: `status.hardware` from what the BMC says (Redfish), no agent booted.

It knows less than the agent: a BMC reports no Linux device names (drives get the BMC's
names, so `deviceName` hints do not match them), no IP addresses, and many BMCs leave out
processors or memory (sushy-tools' emulator does). What it reports is kept as it is.
"""

from __future__ import annotations

from metal3.api.constants import DiskType
from metal3.api.hardware import (
    BIOS,
    CPU,
    NIC,
    Firmware,
    HardwareDetails,
    HardwareSystemVendor,
    Storage,
)
from metal3.bmc.interface import Inventory

OUT_OF_BAND_ANNOTATION = "inspect.metal3.io/method"
"""Annotation asking for out-of-band inspection (value `out-of-band`) of a Redfish host;
without it the agent inspects, unless no agent boot media is configured for the host."""
OUT_OF_BAND = "out-of-band"


def hardware_from_inventory(inventory: Inventory, boot_mac: str | None) -> HardwareDetails:
    """HardwareDetails from a BMC's inventory; the NIC with the boot MAC is the PXE one."""
    boot = (boot_mac or "").lower()
    system = None
    if inventory.manufacturer or inventory.model or inventory.serial_number:
        system = HardwareSystemVendor(
            manufacturer=inventory.manufacturer,
            product_name=inventory.model,
            serial_number=inventory.serial_number,
        )
    firmware = (
        Firmware(bios=BIOS(version=inventory.bios_version)) if inventory.bios_version else None
    )
    cpu = inventory.cpu
    nics = [
        NIC(
            name=nic.name,
            mac=nic.mac,
            speed_gbps=nic.speed_mbps // 1000 if nic.speed_mbps else None,
            pxe=bool(boot) and (nic.mac or "").lower() == boot,
        )
        for nic in inventory.nics
    ]
    storage = [
        Storage(
            name=drive.name,
            size_bytes=drive.size_bytes,
            model=drive.model,
            vendor=drive.vendor,
            serial_number=drive.serial_number,
            rotational=drive.rotational,
            type=None
            if drive.rotational is None
            else (DiskType.HDD if drive.rotational else DiskType.SSD).value,
        )
        for drive in inventory.drives
    ]
    return HardwareDetails(
        system_vendor=system,
        firmware=firmware,
        ram_mebibytes=inventory.memory_mib,
        nics=nics or None,
        storage=storage or None,
        cpu=CPU(
            arch=cpu.arch,
            model=cpu.model,
            clock_megahertz=cpu.max_speed_mhz,
            count=cpu.count,
        ),
    )
