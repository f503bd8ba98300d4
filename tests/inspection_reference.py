"""The Python implementation of the inventory conversion that `metal3.inspection` replaced.

Kept as the reference the native converter (rust/inventory) is compared with: the same output
for every inventory and the same `InventoryError` (path and message) for every malformed one
(tests/test_inspection.py runs its tables on both; tests/test_inspection_native.py compares
them on generated and mutated inventories; the benchmark asserts it on its inventories). The
rules are documented in `metal3.inspection`. It is not used outside the tests.
"""

from __future__ import annotations

import binascii
import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn

import orjson

from metal3.api.constants import DiskType
from metal3.api.hardware import MAC_PATTERN
from metal3.api.model import json_type_name
from metal3.inspection import InventoryError

__all__ = ["hardware_details_from_inventory", "parse_inventory"]

_Accepted = frozenset[type]  # the exact types a field may have
_Fields = tuple[tuple[str, _Accepted], ...]
_NONE: type = type(None)
_STR: _Accepted = frozenset({str, _NONE})
_INT: _Accepted = frozenset({int, _NONE})  # bool is not int here: type(True) is bool
_BOOL: _Accepted = frozenset({bool, _NONE})
_LIST: _Accepted = frozenset({list, _NONE})
_OBJECT: _Accepted = frozenset({dict, _NONE})
_ITEM_STR: _Accepted = frozenset({str})  # an array's item: null is not accepted
_ITEM_OBJECT: _Accepted = frozenset({dict})
_EXPECTED = {
    _STR: "a string",
    _INT: "an integer",
    _BOOL: "a boolean",
    _LIST: "an array",
    _OBJECT: "an object",
    _ITEM_STR: "a string",
    _ITEM_OBJECT: "an object",
}

# The inventory fields read, per section, with the JSON types accepted (null always is).
_INTERFACE_FIELDS: _Fields = (
    ("name", _STR),
    ("mac_address", _STR),
    ("ipv4_address", _STR),
    ("ipv6_address", _STR),
    ("vendor", _STR),
    ("product", _STR),
    ("speed_mbps", _INT),
    ("lldp", _LIST),
    ("pci_address", _STR),
)
_DISK_FIELDS: _Fields = (
    ("name", _STR),
    ("by_path", _STR),
    ("rotational", _BOOL),
    ("size", _INT),
    ("vendor", _STR),
    ("model", _STR),
    ("serial", _STR),
    ("wwn", _STR),
    ("wwn_vendor_extension", _STR),
    ("wwn_with_extension", _STR),
    ("hctl", _STR),
)
_CPU_FIELDS: _Fields = (
    ("architecture", _STR),
    ("model_name", _STR),
    ("frequency", _STR),
    ("count", _INT),
    ("flags", _LIST),
)
_SYSTEM_FIELDS: _Fields = (
    ("manufacturer", _STR),
    ("product_name", _STR),
    ("serial_number", _STR),
    ("firmware", _OBJECT),
)
_FIRMWARE_FIELDS: _Fields = (
    ("vendor", _STR),
    ("version", _STR),
    ("build_date", _STR),
    ("date", _STR),
)
_TOP_FIELDS: _Fields = (
    ("interfaces", _LIST),
    ("disks", _LIST),
    ("cpu", _OBJECT),
    ("memory", _OBJECT),
    ("system_vendor", _OBJECT),
    ("boot", _OBJECT),
    ("hostname", _STR),
)


def _keys(fields: _Fields) -> tuple[str, ...]:
    return tuple(key for key, _ in fields)


def _accepted(fields: _Fields) -> tuple[_Accepted, ...]:
    return tuple(types for _, types in fields)


_INTERFACE_KEYS, _INTERFACE_TYPES = _keys(_INTERFACE_FIELDS), _accepted(_INTERFACE_FIELDS)
_DISK_KEYS, _DISK_TYPES = _keys(_DISK_FIELDS), _accepted(_DISK_FIELDS)
_CPU_KEYS, _CPU_TYPES = _keys(_CPU_FIELDS), _accepted(_CPU_FIELDS)
_SYSTEM_KEYS, _SYSTEM_TYPES = _keys(_SYSTEM_FIELDS), _accepted(_SYSTEM_FIELDS)
_FIRMWARE_KEYS, _FIRMWARE_TYPES = _keys(_FIRMWARE_FIELDS), _accepted(_FIRMWARE_FIELDS)
_TOP_KEYS, _TOP_TYPES = _keys(_TOP_FIELDS), _accepted(_TOP_FIELDS)
_HDD, _NVME, _SSD = str(DiskType.HDD), str(DiskType.NVME), str(DiskType.SSD)
_IN = frozenset.__contains__  # _IN(accepted, type(value)): in C, over whole rows via map()

# Ironic parses the LLDP data of this many interfaces of an inventory, no more.
_LLDP_MAX_INTERFACES = 64
_TLV_VALUE_MAX_LEN = 511  # the 9-bit length field of an LLDP TLV
_VLAN_ID_MAX = 4094
_MAC_IN_TEXT = re.compile(MAC_PATTERN)  # the CRD's pattern for a NIC's mac (unanchored)
_VALID_MAC = re.compile(r"(?:[0-9a-f]{2}[-:]){5}[0-9a-f]{2}")  # oslo's is_valid_mac, lower-case
_FLOAT_PREFIX = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")

# LLDP TLV types and subtypes (IEEE 802.1AB, 802.1Q annex D), as Ironic reads them.
_TLV_CHASSIS_ID, _TLV_PORT_ID, _TLV_SYSTEM_NAME, _TLV_ORG_SPECIFIC = 1, 2, 5, 127
_OUI_802_1 = "0080c2"
_DOT1_PORT_VLAN_ID, _DOT1_VLAN_NAME = 1, 3
# Chassis/port ID subtypes: those carrying text, a MAC, or an IANA-family network address.
_CHASSIS_ID_KINDS = {1: "text", 2: "text", 3: "text", 4: "mac", 5: "address", 6: "text", 7: "text"}
_PORT_ID_KINDS = {1: "text", 2: "text", 3: "mac", 4: "address", 5: "text", 7: "text"}


def _error(path: str, message: str) -> InventoryError:
    """The native converter's InventoryError: its text, with `path` and `message` set."""
    error = InventoryError(f"inventory{path}: {message}")
    error.path = path
    error.message = message
    return error


def parse_inventory(raw: bytes | str) -> dict[str, Any]:
    """Parse an inventory document and check every field this module reads."""
    inventory = _loads(raw)
    _convert(inventory)  # the conversion is the check; its result is the caller's next step
    return inventory


def hardware_details_from_inventory(inventory: Mapping[str, Any] | bytes | str) -> dict[str, Any]:
    """`status.hardware` (HardwareDetails JSON, camelCase) for an inventory, as upstream.

    The inventory is a parsed document or its JSON text (parsed and checked in one pass, as the
    operator receives it from an agent).
    """
    if isinstance(inventory, (bytes, str)):
        return _convert(_loads(inventory))
    if type(inventory) is not dict:
        if not isinstance(inventory, Mapping):
            raise _error("", f"expected an object, got {json_type_name(inventory)}")
        inventory = dict(inventory)
    return _convert(inventory)


def _loads(raw: bytes | str) -> dict[str, Any]:
    try:
        inventory = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _error("", f"not valid JSON: {exc}") from None
    if type(inventory) is not dict:
        raise _error("", f"expected an object, got {json_type_name(inventory)}")
    return inventory


def _convert(inventory: dict[str, Any]) -> dict[str, Any]:
    top = list(map(inventory.get, _TOP_KEYS))
    if not all(map(_IN, _TOP_TYPES, map(type, top))):
        _raise_first_bad("", _TOP_FIELDS, top)
    interfaces, disks, cpu, memory, system, boot, hostname = top
    if not interfaces:
        raise _error(".interfaces", "no network interfaces (Ironic requires one)")

    details: dict[str, Any] = {}
    details["systemVendor"], details["firmware"] = _system(system)
    physical_mb = memory.get("physical_mb") if memory else None
    if physical_mb is not None and type(physical_mb) is not int:
        raise _wrong(".memory.physical_mb", _INT, physical_mb)
    if physical_mb:
        details["ramMebibytes"] = physical_mb
    details["nics"] = _nics(interfaces, _pxe_mac(boot))
    if disks:
        details["storage"] = _storage(disks)
    details["cpu"] = _cpu(cpu or {})
    if hostname:
        details["hostname"] = hostname
    return details


# --- sections ----------------------------------------------------------------------------


def _system(system: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`systemVendor` and `firmware` (both always present, as Go writes plain structs)."""
    vendor: dict[str, Any] = {}
    bios: dict[str, Any] = {}
    if system:
        row = list(map(system.get, _SYSTEM_KEYS))
        if not all(map(_IN, _SYSTEM_TYPES, map(type, row))):
            _raise_first_bad(".system_vendor", _SYSTEM_FIELDS, row)
        manufacturer, product_name, serial_number, firmware = row
        if manufacturer:
            vendor["manufacturer"] = manufacturer
        if product_name:
            vendor["productName"] = product_name
        if serial_number:
            vendor["serialNumber"] = serial_number
        if firmware:
            row = list(map(firmware.get, _FIRMWARE_KEYS))
            if not all(map(_IN, _FIRMWARE_TYPES, map(type, row))):
                _raise_first_bad(".system_vendor.firmware", _FIRMWARE_FIELDS, row)
            fw_vendor, fw_version, build_date, date = row
            date = build_date or date
            if date:
                bios["date"] = date
            if fw_vendor:
                bios["vendor"] = fw_vendor
            if fw_version:
                bios["version"] = fw_version
    return vendor, {"bios": bios}


def _cpu(cpu: dict[str, Any]) -> dict[str, Any]:
    row = list(map(cpu.get, _CPU_KEYS))
    if not all(map(_IN, _CPU_TYPES, map(type, row))):
        _raise_first_bad(".cpu", _CPU_FIELDS, row)
    architecture, model_name, frequency, count, flags = row
    out: dict[str, Any] = {}
    if architecture:
        out["arch"] = architecture
    if model_name:
        out["model"] = model_name
    if frequency:
        clock = _clock_megahertz(frequency)
        if clock:
            out["clockMegahertz"] = clock
    if flags:
        if not _ITEM_STR.issuperset(map(type, flags)):
            index = next(i for i, flag in enumerate(flags) if type(flag) is not str)
            raise _wrong(f".cpu.flags[{index}]", _ITEM_STR, flags[index])
        out["flags"] = sorted(flags)
    if count:
        out["count"] = count
    return out


def _clock_megahertz(frequency: str) -> int | float:
    """The number `frequency` starts with, rounded (Go's Sscanf("%f") then math.Round)."""
    match = _FLOAT_PREFIX.match(frequency)
    if match is None:
        return 0
    value = float(match.group(1))
    if not math.isfinite(value):
        return 0  # not representable in JSON
    magnitude = abs(value)
    whole = math.floor(magnitude)
    if magnitude - whole >= 0.5:  # exact for doubles: half away from zero, as Go's math.Round
        whole += 1
    rounded = whole if value >= 0 else -whole
    return rounded if abs(rounded) < 2**53 else float(rounded)


def _storage(disks: list[Any]) -> list[dict[str, Any]]:
    storage = []
    for index, disk in enumerate(disks):
        if type(disk) is not dict:
            raise _wrong(f".disks[{index}]", _ITEM_OBJECT, disk)
        row = list(map(disk.get, _DISK_KEYS))
        if not all(map(_IN, _DISK_TYPES, map(type, row))):
            _raise_first_bad(f".disks[{index}]", _DISK_FIELDS, row)
        name, by_path, rotational, size, vendor, model, serial, wwn, wwn_ve, wwn_we, hctl = row
        name = name or ""
        out: dict[str, Any]
        if by_path:
            out = {"name": by_path, "alternateNames": [name, by_path]}
        elif name:
            out = {"name": name, "alternateNames": [name]}
        else:
            out = {"alternateNames": [""]}  # Go leaves out the empty name, not the list
        if rotational:
            out["rotational"] = True
            out["type"] = _HDD
        elif name.startswith("/dev/nvme"):
            out["type"] = _NVME
        else:
            out["type"] = _SSD
        if size:
            out["sizeBytes"] = size
        if vendor:
            out["vendor"] = vendor
        if model:
            out["model"] = model
        if serial:
            out["serialNumber"] = serial
        if wwn:
            out["wwn"] = wwn
        if wwn_ve:
            out["wwnVendorExtension"] = wwn_ve
        if wwn_we:
            out["wwnWithExtension"] = wwn_we
        if hctl:
            out["hctl"] = hctl
        storage.append(out)
    return storage


def _pxe_mac(boot: dict[str, Any] | None) -> str | None:
    """The MAC the host PXE-booted from (Ironic's get_pxe_mac), lower-cased."""
    pxe_interface = boot.get("pxe_interface") if boot else None
    if pxe_interface is not None and type(pxe_interface) is not str:
        raise _wrong(".boot.pxe_interface", _STR, pxe_interface)
    if not pxe_interface:
        return None
    if "-" in pxe_interface:  # pxelinux form: 01-aa-bb-cc-dd-ee-ff
        pxe_interface = pxe_interface.split("-", 1)[1].replace("-", ":")
    return pxe_interface.lower()


def _nics(interfaces: list[Any], pxe_mac: str | None) -> list[dict[str, Any]]:
    nics = []
    decoded: _Decoded = {}
    for index, iface in enumerate(interfaces):
        if type(iface) is not dict:
            raise _wrong(f".interfaces[{index}]", _ITEM_OBJECT, iface)
        row = list(map(iface.get, _INTERFACE_KEYS))
        if not all(map(_IN, _INTERFACE_TYPES, map(type, row))):
            _raise_first_bad(f".interfaces[{index}]", _INTERFACE_FIELDS, row)
        name, mac, ipv4, ipv6, vendor, product, speed_mbps, tlvs, pci_address = row
        nic: dict[str, Any] = {}
        if name:
            nic["name"] = name
        if vendor or product:
            model = f"{vendor or ''} {product or ''}".lstrip(" ")
            if model:
                nic["model"] = model
        if mac:
            if _MAC_IN_TEXT.search(mac) is None:
                raise _error(f".interfaces[{index}].mac_address", f"{mac!r} is not a MAC address")
            nic["mac"] = mac
        ip = ipv4 or ipv6
        if ip:
            nic["ip"] = ip
        if speed_mbps:
            gbps = speed_mbps // 1000 if speed_mbps >= 0 else -(-speed_mbps // 1000)
            if gbps:
                nic["speedGbps"] = gbps
        lldp = None
        if tlvs and index < _LLDP_MAX_INTERFACES:
            lldp, vlans, vlan_id = _parse_lldp(tlvs, index, decoded)
            if vlans:
                nic["vlans"] = vlans
            if vlan_id:
                nic["vlanId"] = vlan_id
        if (
            pxe_mac is not None
            and name
            and mac
            and mac.lower() == pxe_mac
            and _VALID_MAC.fullmatch(pxe_mac)
        ):
            nic["pxe"] = True
        if lldp:
            nic["lldp"] = lldp
        if pci_address:
            nic["pciAddress"] = pci_address
        nics.append(nic)
        if ipv4 and ipv6:  # dual stack: a second entry, the same NIC with its IPv6 address
            nic = _copy_nic(nic)
            nic["ip"] = ipv6
            nics.append(nic)
    return nics


def _copy_nic(nic: dict[str, Any]) -> dict[str, Any]:
    """A copy sharing nothing mutable with the original (its vlans and lldp are copied)."""
    copy = dict(nic)
    if "vlans" in copy:
        copy["vlans"] = [dict(vlan) for vlan in copy["vlans"]]
    if "lldp" in copy:
        copy["lldp"] = dict(copy["lldp"])
    return copy


# --- LLDP ---------------------------------------------------------------------------------

_UNTAGGED_VLAN, _VLAN = 0, 1  # what an 802.1Q TLV tells, once decoded
_Decoded = dict[str, tuple[int, Any] | None]


def _parse_lldp(
    tlvs: list[Any], index: int, decoded: _Decoded
) -> tuple[dict[str, str] | None, list[dict[str, Any]] | None, int]:
    """Switch facts from raw TLVs `[[type, hex], ...]`: the LLDP entry, VLANs, untagged VLAN.

    As Ironic, the first readable TLV of a kind wins (VLAN names accumulate), and a TLV that
    cannot be read is skipped. `decoded` keeps this inventory's 802.1Q TLVs decoded: the NICs
    of a host share one or two switches, whose VLAN TLVs are then decoded once.
    """
    chassis_id = port_id = system_name = None
    vlans: list[dict[str, Any]] | None = None
    vlan_id: int | None = None
    try:
        for kind, value in tlvs:
            if type(kind) is not int or type(value) is not str:
                _raise_bad_tlv(tlvs, index)
            if kind == _TLV_ORG_SPECIFIC:
                if value in decoded:
                    fact = decoded[value]
                else:
                    fact = decoded[value] = _dot1_tlv(value)
                if fact is None:
                    continue
                if fact[0] == _VLAN:
                    if vlans is None:
                        vlans = []
                    vlans.append(dict(fact[1]))
                elif vlan_id is None:
                    vlan_id = fact[1]
            elif kind == _TLV_PORT_ID:
                if port_id is None:
                    port_id = _id_tlv(value, _PORT_ID_KINDS)
            elif kind == _TLV_CHASSIS_ID:
                if chassis_id is None:
                    chassis_id = _id_tlv(value, _CHASSIS_ID_KINDS)
            elif kind == _TLV_SYSTEM_NAME and system_name is None:
                system_name = _text(_unhex(value))
    except (TypeError, ValueError):  # an item that is not a pair
        _raise_bad_tlv(tlvs, index)
    lldp: dict[str, str] = {}
    if chassis_id:
        lldp["switchID"] = chassis_id
    if port_id:
        lldp["portID"] = port_id
    if system_name:
        lldp["switchSystemName"] = system_name
    return lldp or None, vlans, vlan_id or 0


def _dot1_tlv(value: str) -> tuple[int, Any] | None:
    """An organizationally specific TLV's 802.1Q fact: the untagged VLAN or a named VLAN."""
    if value[:6].lower() != _OUI_802_1:
        return None
    data = _unhex(value)
    if data is None or len(data) < 4:
        return None
    subtype, payload = data[3], data[4:]
    if subtype == _DOT1_PORT_VLAN_ID:
        if len(payload) < 2:
            return None
        untagged = int.from_bytes(payload[:2], "big")
        return (_UNTAGGED_VLAN, untagged) if untagged <= _VLAN_ID_MAX else None
    if subtype == _DOT1_VLAN_NAME:
        vlan = _vlan_name(payload)
        return None if vlan is None else (_VLAN, tuple(vlan.items()))
    return None


def _unhex(value: str) -> bytes | None:
    if len(value) > 2 * _TLV_VALUE_MAX_LEN:
        return None
    try:
        return binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        return None


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _id_tlv(value: str, kinds: dict[int, str]) -> str | None:
    """A chassis or port ID: its text, MAC or address form by subtype; None if unreadable.

    An address of an unknown family reads as "" (Ironic records an empty value, which holds the
    place of that kind of TLV and is left out of the output).
    """
    data = _unhex(value)
    if not data:
        return None
    kind = kinds.get(data[0])
    if kind == "text":
        return _text(data[1:])
    if kind == "mac":
        return _mac(data[1:7]) if len(data) >= 7 else None
    if kind == "address" and len(data) >= 2:
        family, address = data[1], data[2:]
        if family == 1:
            return ".".join(map(str, address[:4])) if len(address) >= 4 else None
        if family == 2:
            return _ipv6(address[:16]) if len(address) >= 16 else None
        if family == 6:
            return _mac(address[:6]) if len(address) >= 6 else None
        return ""
    return None


def _mac(data: bytes) -> str:
    return data.hex(":")


def _ipv6(data: bytes) -> str:
    return str(ipaddress.IPv6Address(data))


def _vlan_name(payload: bytes) -> dict[str, Any] | None:
    """An 802.1Q VLAN name TLV: VLAN ID (2 bytes), name length (1 byte), name (NUL-padded)."""
    if len(payload) < 3:
        return None
    vid = int.from_bytes(payload[:2], "big")
    length = payload[2]
    raw = payload[3 : 3 + length]
    if len(raw) < length or vid > _VLAN_ID_MAX:
        return None
    name = _text(raw)
    if name is None:
        return None
    name = name.rstrip("\x00")
    vlan: dict[str, Any] = {}
    if vid:
        vlan["id"] = vid
    if name:
        vlan["name"] = name
    return vlan


# --- errors -------------------------------------------------------------------------------


def _wrong(path: str, accepted: _Accepted, value: Any) -> InventoryError:
    return _error(path, f"expected {_EXPECTED[accepted]}, got {json_type_name(value)}")


def _raise_bad_tlv(tlvs: list[Any], index: int) -> NoReturn:
    for position, tlv in enumerate(tlvs):
        path = f".interfaces[{index}].lldp[{position}]"
        if type(tlv) is not list or len(tlv) != 2:
            raise _error(path, "expected a [type, hex value] pair")
        kind, value = tlv
        if type(kind) is not int or type(value) is not str:
            raise _error(
                path,
                f"expected [integer, string], got [{json_type_name(kind)}, "
                f"{json_type_name(value)}]",
            )
    raise AssertionError("TLVs failed their check but none is wrong")  # pragma: no cover


def _raise_first_bad(path: str, fields: _Fields, row: list[Any]) -> NoReturn:
    for (key, accepted), value in zip(fields, row, strict=True):
        if type(value) not in accepted:
            raise _wrong(f"{path}.{key}", accepted, value)
    raise AssertionError("a row failed its type check but no field is wrong")  # pragma: no cover
