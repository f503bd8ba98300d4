"""The `interfaces` section: the host's network interfaces, as ironic-python-agent lists them.

Which interfaces: as IPA, those backed by a device (sysfs `device` link: PCI, virtio, USB
NICs) and VLAN interfaces (named IFACE.VLANID); never `lo` or other virtual devices (bridges,
bonds, tunnels). One addition: virtual Ethernet pairs (veth), the only interfaces of this
project's lab hosts, which run in network namespaces. The `veth` policy says when they count:
"auto" (default) lists them only when no device-backed interface exists, "include" always,
"exclude" never. Telling veth from other virtual devices needs `ip -d`; without `ip`, none is.

Per interface: `mac_address` (sysfs `address`; for InfiniBand the Ethernet-style MAC made
from the port GUID, with `client_id` the DHCP client identifier of RFC 4390, as IPA's
Mellanox hardware manager does), `ipv4_address`/`ipv6_address` (the first address of global
scope in `ip addr`; IPA may also report a link-local IPv6 address, this does not),
`has_carrier`, `speed_mbps` (sysfs `speed`; null when the link is down or reports none),
`vendor`/`product` (the device's vendor and device IDs), `driver` (the device's driver;
for a device-less interface, `ethtool -i`), `pxe_enabled` (its MAC is the BOOTIF MAC; never
for a VLAN interface, which shares its parent's MAC).
`lldp` and `biosdevname` are null: LLDP is not collected and `biosdevname` not run.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, TypedDict

from metal3.agent.inventory.boot import bootif_mac
from metal3.agent.inventory.sysroot import SysRoot

log = logging.getLogger(__name__)

VethPolicy = Literal["auto", "include", "exclude"]
NET = "sys/class/net"
ARPHRD_INFINIBAND = "32"
# RFC 4390 client identifier prefix for IPoIB, as IPA's Mellanox hardware manager writes it.
INFINIBAND_CLIENT_ID_PREFIX = "ff:00:00:00:00:00:02:00:00:02:c9:00:"


class Interface(TypedDict):
    name: str
    mac_address: str
    ipv4_address: str | None
    ipv6_address: str | None
    has_carrier: bool
    lldp: list[Any] | None
    vendor: str | None
    product: str | None
    client_id: str | None
    biosdevname: str | None
    speed_mbps: int | None
    driver: str | None
    pxe_enabled: bool


def collect_interfaces(host: SysRoot, *, veth: VethPolicy = "auto") -> list[Interface]:
    """The `interfaces` section, sorted by name."""
    links = _ip_links(host)
    names = [name for name in host.listdir(NET) if name != "lo"]
    chosen = [name for name in names if _is_vlan(name) or host.exists(f"{NET}/{name}/device")]
    if veth == "include" or (veth == "auto" and not chosen):
        chosen += [
            name
            for name in names
            if (links.get(name) or {}).get("linkinfo", {}).get("info_kind") == "veth"
        ]
    boot_mac = bootif_mac(host)
    found = []
    for name in sorted(set(chosen)):
        interface = _interface(host, name, links.get(name), boot_mac)
        if interface is not None:
            found.append(interface)
    return found


def _is_vlan(name: str) -> bool:
    _, _, vlan = name.partition(".")
    return vlan.isdigit()


def _ip_links(host: SysRoot) -> dict[str, dict[str, Any]]:
    """`ip -d -j addr show` by interface name; empty (addresses unknown) without `ip`."""
    out = host.tool(["ip", "-d", "-j", "addr", "show"], "ip-addr.json")
    if out is None:
        return {}
    try:
        return {str(link["ifname"]): link for link in json.loads(out)}
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("interfaces: cannot parse the ip output (%s); addresses unknown", exc)
        return {}


def _interface(
    host: SysRoot, name: str, link: dict[str, Any] | None, boot_mac: str | None
) -> Interface | None:
    address = host.attr(f"{NET}/{name}/address")
    if address is None:
        log.warning("interfaces: %s has no address in sysfs; left out", name)
        return None
    address = address.lower()
    client_id = None
    if host.attr(f"{NET}/{name}/type") == ARPHRD_INFINIBAND:
        address, client_id = _infiniband_ids(address)
    return Interface(
        name=name,
        mac_address=address,
        ipv4_address=_first_global(link, "inet"),
        ipv6_address=_first_global(link, "inet6"),
        has_carrier=host.attr(f"{NET}/{name}/carrier") == "1",
        lldp=None,
        vendor=host.attr(f"{NET}/{name}/device/vendor"),
        product=host.attr(f"{NET}/{name}/device/device"),
        client_id=client_id,
        biosdevname=None,
        speed_mbps=_speed(host.attr(f"{NET}/{name}/speed")),
        driver=_driver(host, name),
        pxe_enabled=boot_mac is not None and address == boot_mac and not _is_vlan(name),
    )


def _infiniband_ids(address: str) -> tuple[str, str]:
    """(MAC, client id) of an IPoIB interface from its 20-byte hardware address, whose last
    8 bytes are the port GUID: the MAC is GUID bytes 0-2 and 5-7, the client id the RFC 4390
    prefix followed by the GUID (both as IPA's Mellanox hardware manager makes them)."""
    guid = address.split(":")[-8:]
    return ":".join(guid[:3] + guid[5:]), INFINIBAND_CLIENT_ID_PREFIX + ":".join(guid)


def _speed(value: str | None) -> int | None:
    """Mb/s from sysfs `speed`; drivers without a link or a known speed report -1 (or 0)."""
    try:
        speed = int(value or "")
    except ValueError:
        return None
    return speed if speed > 0 else None


def _first_global(link: dict[str, Any] | None, family: str) -> str | None:
    for info in (link or {}).get("addr_info", []):
        if info.get("family") == family and info.get("scope") == "global" and info.get("local"):
            return str(info["local"])
    return None


def _driver(host: SysRoot, name: str) -> str | None:
    """The driver bound to the interface's device (its uevent's DRIVER=); for interfaces
    without a device (veth, VLAN), what `ethtool -i` names."""
    if host.exists(f"{NET}/{name}/device"):
        for line in (host.read(f"{NET}/{name}/device/uevent") or "").splitlines():
            if line.startswith("DRIVER="):
                return line.removeprefix("DRIVER=").strip() or None
        return None
    out = host.tool(["ethtool", "-i", name], f"ethtool-i/{name}.txt")
    for line in (out or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "driver":
            return value.strip() or None
    return None
