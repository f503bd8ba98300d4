"""The `memory` section: `total` in bytes and `physical_mb`, the installed RAM in MiB.

`total` is MemTotal of /proc/meminfo in bytes (what IPA's psutil reports). `physical_mb` is
larger: it counts what the kernel and firmware reserve. IPA takes it from `lshw`; here, in order:
1. the sum of the memory devices (DIMMs) of the SMBIOS tables, from `dmidecode --type 17`;
2. without SMBIOS tables (virtual machines): the online memory blocks in
   /sys/devices/system/memory times their block size (where `lshw` also ends up; it gives
   the 24576 MiB IPA reports on this project's 24 GiB VMs);
3. else MemTotal rounded up to a whole MiB, which undercounts the reserved memory.
"""

from __future__ import annotations

import logging
import re
from typing import TypedDict

from metal3.agent.inventory.sysroot import SysRoot

log = logging.getLogger(__name__)

MiB = 1 << 20
MEMORY_SYSFS = "sys/devices/system/memory"
# dmidecode prints sizes in binary units whatever it calls them ("16 GB" is 16 GiB).
_UNIT_MIB = {"kB": 1 / 1024, "KB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024}
_SIZE_LINE = re.compile(r"^\s*Size:\s*(\d+)\s*(kB|KB|MB|GB|TB)\s*$")


class MemoryInfo(TypedDict):
    total: int
    physical_mb: int


def collect_memory(host: SysRoot) -> MemoryInfo | None:
    """The `memory` section, or None when /proc/meminfo has no MemTotal."""
    total = _mem_total(host)
    if total is None:
        log.warning(
            "memory: no MemTotal in %s; the memory section is left out", host.path("proc/meminfo")
        )
        return None
    physical = _dimm_mb(host) or _memory_blocks_mb(host)
    if physical is None:
        physical = -(-total // MiB)
        log.info("memory: physical_mb is MemTotal rounded up to a MiB (%d)", physical)
    return MemoryInfo(total=total, physical_mb=physical)


def _mem_total(host: SysRoot) -> int | None:
    text = host.read("proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
    return None


def _dimm_mb(host: SysRoot) -> int | None:
    """Sum of the DIMM sizes in the SMBIOS tables; None without tables or DIMM sizes."""
    if not host.exists("sys/firmware/dmi/tables"):
        log.info("memory: no SMBIOS tables (no /sys/firmware/dmi/tables); no DIMM sizes")
        return None
    out = host.tool(["dmidecode", "--type", "17"], "dmidecode-t17.txt")
    if out is None:
        return None
    mib = parse_dimm_sizes_mib(out)
    if not mib:
        log.info("memory: dmidecode lists no memory device with a size")
        return None
    return mib


def parse_dimm_sizes_mib(dmidecode_t17: str) -> int:
    """The total of the "Size:" lines of `dmidecode --type 17` output, in MiB (empty slots,
    "No Module Installed", count nothing; "Volatile Size" and the like are other lines)."""
    total = 0.0
    for line in dmidecode_t17.splitlines():
        match = _SIZE_LINE.match(line)
        if match:
            total += int(match.group(1)) * _UNIT_MIB[match.group(2)]
    return int(total)


def _memory_blocks_mb(host: SysRoot) -> int | None:
    """Online memory blocks times the block size, in MiB; None without the sysfs directory."""
    size = host.attr(f"{MEMORY_SYSFS}/block_size_bytes")
    if size is None:
        return None
    try:
        block = int(size, 16)
    except ValueError:
        log.warning("memory: unreadable block size %r", size)
        return None
    online = sum(
        1
        for name in host.listdir(MEMORY_SYSFS)
        if name.startswith("memory") and host.attr(f"{MEMORY_SYSFS}/{name}/online") == "1"
    )
    if not online:
        return None
    return online * block // MiB
