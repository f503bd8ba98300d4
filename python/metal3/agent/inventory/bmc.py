"""`bmc_address`, `bmc_v6address` and `bmc_mac`: the host's own BMC, asked through the local
IPMI device (/dev/ipmi0) with `ipmitool`, as ironic-python-agent does.

LAN channels 1 to 11 are asked in turn; the first channel with an IPv4 address other than
0.0.0.0 gives `bmc_address` and `bmc_mac` (`ipmitool lan print CH`), the first channel with
IPv6 enabled and an active address (dynamic first, then static) gives `bmc_v6address`
(`ipmitool lan6 print CH`). With no IPMI device, or no channel configured, the values are
IPA's "nothing found": "0.0.0.0", "::/0" and a null `bmc_mac`. When an IPMI device exists
but `ipmitool` cannot ask it, the addresses are unknown and left out of the inventory.
The kernel's IPMI modules are not loaded here: the device must already exist.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass

from metal3.agent.inventory.sysroot import SysRoot

log = logging.getLogger(__name__)

IPMI_DEVICES = ("dev/ipmi0", "dev/ipmi/0", "dev/ipmidev/0")
CHANNELS = range(1, 12)
NO_ADDRESS = "0.0.0.0"
NO_V6_ADDRESS = "::/0"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_V6_BLOCK = re.compile(r"^IPv6 (Static|Dynamic) Address \d+:\s*$")


@dataclass(frozen=True)
class BmcInfo:
    """The BMC's addresses; None where it could not be asked (unknown, not "none")."""

    address: str | None
    v6address: str | None
    mac: str | None


def collect_bmc(host: SysRoot) -> BmcInfo:
    if not any(host.exists(device) for device in IPMI_DEVICES):
        log.info("bmc: no local IPMI device (/dev/ipmi0): no BMC address")
        return BmcInfo(address=NO_ADDRESS, v6address=NO_V6_ADDRESS, mac=None)
    v4 = _v4_address(host)
    address, mac = v4 if v4 is not None else (None, None)
    return BmcInfo(address=address, v6address=_v6_address(host), mac=mac)


def _v4_address(host: SysRoot) -> tuple[str, str | None] | None:
    """(address, MAC) of the first configured channel; (0.0.0.0, None) when no channel is
    configured; None when `ipmitool` answered for no channel at all."""
    answered = False
    for channel in CHANNELS:
        out = host.tool(
            ["ipmitool", "lan", "print", str(channel)],
            f"ipmitool/lan-print-{channel}.txt",
            quiet=True,
        )
        if out is None:
            continue
        answered = True
        fields = _fields(out)
        address = fields.get("IP Address", "")
        if not _is_ip(address) or address == NO_ADDRESS:
            continue
        mac = fields.get("MAC Address", "").lower()
        return address, mac if _MAC.match(mac) and mac != "00:00:00:00:00:00" else None
    if not answered:
        log.warning("bmc: ipmitool answered for no LAN channel; bmc_address unknown")
        return None
    return NO_ADDRESS, None


def _v6_address(host: SysRoot) -> str | None:
    answered = False
    for channel in CHANNELS:
        out = host.tool(
            ["ipmitool", "lan6", "print", str(channel)],
            f"ipmitool/lan6-print-{channel}.txt",
            quiet=True,
        )
        if out is None:
            continue
        answered = True
        if _fields(out).get("IPv6/IPv4 Addressing Enables") not in ("ipv6", "both"):
            continue
        address = parse_lan6_address(out)
        if address is not None:
            return address
    if not answered:
        log.warning("bmc: ipmitool lan6 answered for no LAN channel; bmc_v6address unknown")
        return None
    return NO_V6_ADDRESS


def parse_lan6_address(lan6_print: str) -> str | None:
    """The active IPv6 address in `ipmitool lan6 print` output: a dynamic one (DHCPv6 or
    SLAAC) first, else an enabled static one; None when there is none."""
    blocks: list[tuple[str, dict[str, str]]] = []
    for line in lan6_print.splitlines():
        match = _V6_BLOCK.match(line)
        if match:
            blocks.append((match.group(1), {}))
        elif blocks and line.startswith((" ", "\t")):
            key, sep, value = line.partition(":")
            if sep:
                blocks[-1][1][key.strip()] = value.strip()
        else:
            blocks.append(("", {}))  # a top-level line ends the current block
    for kind in ("Dynamic", "Static"):
        for block_kind, block in blocks:
            if block_kind != kind or block.get("Status") != "active":
                continue
            if kind == "Dynamic" and block.get("Source/Type") not in ("DHCPv6", "SLAAC"):
                continue
            if kind == "Static" and block.get("Enabled") != "yes":
                continue
            address = block.get("Address", "").split("/")[0]
            if _is_ip(address) and not ipaddress.ip_address(address).is_unspecified:
                return address
    return None


def _fields(text: str) -> dict[str, str]:
    """The "Name   : value" lines of ipmitool's print output (first occurrence wins)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "\t")):
            fields.setdefault(key.strip(), value.strip())
    return fields


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
