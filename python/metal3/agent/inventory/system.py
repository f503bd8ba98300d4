"""The `system_vendor` section and `hostname`.

`system_vendor` comes from the SMBIOS strings the kernel exposes in /sys/class/dmi/id:
`product_name` (product_name), `serial_number` (product_serial), `manufacturer`
(sys_vendor) and `firmware` (bios_vendor, bios_version, bios_date as `vendor`, `version`,
`build_date`, IPA's field names). A string the firmware does not provide is "", as IPA
gives it; machines without SMBIOS (this project's VMs) have all of them "".
`hostname` is the kernel's host name, /proc/sys/kernel/hostname (what gethostname() returns).
"""

from __future__ import annotations

import logging
from typing import TypedDict

from metal3.agent.inventory.sysroot import SysRoot

log = logging.getLogger(__name__)

DMI_ID = "sys/class/dmi/id"


class Firmware(TypedDict):
    vendor: str
    version: str
    build_date: str


class SystemVendor(TypedDict):
    product_name: str
    serial_number: str
    manufacturer: str
    firmware: Firmware


def collect_system_vendor(host: SysRoot) -> SystemVendor:
    if not host.is_dir(DMI_ID):
        log.info("system_vendor: no SMBIOS strings (no /sys/class/dmi/id); fields left empty")

    def dmi(name: str) -> str:
        return host.attr(f"{DMI_ID}/{name}") or ""

    return SystemVendor(
        product_name=dmi("product_name"),
        serial_number=dmi("product_serial"),
        manufacturer=dmi("sys_vendor"),
        firmware=Firmware(
            vendor=dmi("bios_vendor"), version=dmi("bios_version"), build_date=dmi("bios_date")
        ),
    )


def collect_hostname(host: SysRoot) -> str | None:
    name = host.attr("proc/sys/kernel/hostname")
    if name is None:
        log.warning("hostname: cannot read %s", host.path("proc/sys/kernel/hostname"))
    return name
