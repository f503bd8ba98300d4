"""The `boot` section: the current boot mode and the interface the host network-booted from.

`current_boot_mode` is "uefi" when the kernel was started by UEFI firmware (/sys/firmware/efi
exists), else "bios". `pxe_interface` is the BOOTIF kernel argument as PXE/iPXE pass it
("01-52-54-00-12-34-56": ARP hardware type 1, then the MAC), unchanged as IPA reports it;
null when the host did not network-boot with BOOTIF.
"""

from __future__ import annotations

import logging
from typing import TypedDict

from metal3.agent.inventory.sysroot import SysRoot

log = logging.getLogger(__name__)


class BootInfo(TypedDict):
    current_boot_mode: str
    pxe_interface: str | None


def collect_boot(host: SysRoot) -> BootInfo:
    mode = "uefi" if host.is_dir("sys/firmware/efi") else "bios"
    return BootInfo(current_boot_mode=mode, pxe_interface=bootif(host))


def bootif(host: SysRoot) -> str | None:
    """The value of the last BOOTIF= argument on the kernel command line, or None."""
    cmdline = host.read("proc/cmdline")
    if cmdline is None:
        log.warning("boot: cannot read %s; pxe_interface unknown", host.path("proc/cmdline"))
        return None
    value = None
    for arg in cmdline.split():
        if arg.startswith("BOOTIF="):
            value = arg.removeprefix("BOOTIF=").strip("'\"") or None
    return value


def bootif_mac(host: SysRoot) -> str | None:
    """The MAC address in BOOTIF, as "aa:bb:cc:dd:ee:ff"; None without BOOTIF.

    PXE writes the ARP hardware type first ("01-" for Ethernet); a bare MAC is accepted too.
    """
    value = bootif(host)
    if value is None:
        return None
    parts = value.replace(":", "-").lower().split("-")
    if len(parts) == 7:
        parts = parts[1:]
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        log.warning("boot: BOOTIF=%s names no Ethernet MAC address", value)
        return None
    return ":".join(parts)
