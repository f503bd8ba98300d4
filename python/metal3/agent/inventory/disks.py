"""The `disks` section: the whole disks as ironic-python-agent lists them, plus loop disks.

The list comes from `lsblk`; as IPA, it keeps devices of type "disk" and RAID arrays (types
"raid*"), and drops RAM disks (ram*, zram*), floppies (fd*) and devices of size 0.
Unlike IPA, loop devices that have a backing file are kept too: this project's test and lab
disks are loop devices. Loop devices without a backing file have size 0 and stay out.

Per disk: `name` (/dev/KNAME), `model` ("" when unknown, as IPA's `lsblk -P` gives), `size`
in bytes, `rotational`, `vendor` (sysfs `device/vendor`, as IPA), `serial` (udev
ID_SERIAL_SHORT, else lsblk SERIAL), `wwn`, `wwn_with_extension`, `wwn_vendor_extension`
(udev ID_WWN*), `hctl` (the SCSI address in sysfs `device/scsi_device/`), `by_path` (the
/dev/disk/by-path link to the disk; the first by name when there are several), `uuid`
(lsblk UUID), `logical_sectors`/`physical_sectors` (bytes per sector) and `tran` (lsblk).
Fields nothing reports are null. Without `udevadm` (or with an empty udev database, as on
a host without a udev daemon) the udev fields are null; without `lsblk` the section is left out.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any, TypedDict

from metal3.agent.inventory.sysroot import SysRoot

log = logging.getLogger(__name__)

LSBLK_COLUMNS = (
    "KNAME,MODEL,SIZE,ROTA,TYPE,UUID,PARTUUID,SERIAL,WWN,VENDOR,HCTL,TRAN,LOG-SEC,PHY-SEC"
)
BY_PATH = "dev/disk/by-path"


class Disk(TypedDict):
    name: str
    model: str
    size: int
    rotational: bool
    wwn: str | None
    serial: str | None
    vendor: str | None
    wwn_with_extension: str | None
    wwn_vendor_extension: str | None
    hctl: str | None
    by_path: str | None
    uuid: str | None
    logical_sectors: int | None
    physical_sectors: int | None
    tran: str | None


def collect_disks(host: SysRoot) -> list[Disk] | None:
    """The `disks` section in `lsblk` order, or None when `lsblk` gives nothing usable."""
    out = host.tool(["lsblk", "-bia", "--json", "-o", LSBLK_COLUMNS], "lsblk.json")
    if out is None:
        log.warning("disks: no lsblk output; the disks section is left out")
        return None
    try:
        devices = list(_flatten(json.loads(out)["blockdevices"]))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("disks: cannot parse the lsblk output (%s); the disks section is left out", exc)
        return None
    by_path = _by_path_links(host)
    disks: list[Disk] = []
    seen: set[str] = set()
    for device in devices:
        kname = str(device.get("kname") or "")
        if not kname or kname in seen or not _is_listed_disk(host, device):
            continue
        seen.add(kname)
        disks.append(_disk(host, device, by_path))
    return disks


def _flatten(devices: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """lsblk's JSON nests partitions and holders under their disks: walk them all."""
    for device in devices:
        yield device
        yield from _flatten(device.get("children") or [])


def _is_listed_disk(host: SysRoot, device: dict[str, Any]) -> bool:
    kname = str(device["kname"])
    kind = str(device.get("type") or "")
    if kind == "loop":
        if not host.exists(f"sys/block/{kname}/loop/backing_file"):
            return False
    elif kind != "disk" and "raid" not in kind:
        return False
    if kname.startswith(("ram", "zram", "fd")):
        return False
    return _int(device.get("size")) > 0


def _disk(host: SysRoot, device: dict[str, Any], by_path: dict[str, str]) -> Disk:
    kname = str(device["kname"])
    udev = _udev_properties(host, kname)
    scsi = host.listdir(f"sys/block/{kname}/device/scsi_device")
    return Disk(
        name=f"/dev/{kname}",
        model=_text(device.get("model")) or "",
        size=_int(device.get("size")),
        rotational=_bool(device.get("rota")),
        wwn=udev.get("ID_WWN"),
        serial=udev.get("ID_SERIAL_SHORT") or _text(device.get("serial")),
        vendor=host.attr(f"sys/block/{kname}/device/vendor"),
        wwn_with_extension=udev.get("ID_WWN_WITH_EXTENSION"),
        wwn_vendor_extension=udev.get("ID_WWN_VENDOR_EXTENSION"),
        hctl=scsi[0] if scsi else None,
        by_path=by_path.get(f"/dev/{kname}"),
        uuid=_text(device.get("uuid")),
        logical_sectors=_int(device.get("log-sec")) or None,
        physical_sectors=_int(device.get("phy-sec")) or None,
        tran=_text(device.get("tran")),
    )


def _udev_properties(host: SysRoot, kname: str) -> dict[str, str]:
    """The udev properties of /dev/KNAME (empty values dropped); empty when unavailable."""
    out = host.tool(
        ["udevadm", "info", "--query=property", f"--name=/dev/{kname}"], f"udevadm/{kname}.txt"
    )
    properties = {}
    for line in (out or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and value.strip():
            properties[key.strip()] = value.strip()
    return properties


def _by_path_links(host: SysRoot) -> dict[str, str]:
    """/dev node -> its /dev/disk/by-path link; of several links, the first by name."""
    links: dict[str, str] = {}
    for entry in host.listdir(BY_PATH):
        target = host.readlink(f"{BY_PATH}/{entry}")
        if target is None:
            continue
        node = os.path.normpath(os.path.join("/" + BY_PATH, target))
        links.setdefault(node, f"/{BY_PATH}/{entry}")
    return links


def _text(value: object) -> str | None:
    """A column's value as text with the padding lsblk keeps (MODEL, VENDOR) removed."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value: object) -> int:
    """lsblk gives numbers as JSON numbers (util-linux >= 2.33) or as strings (older)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return 0


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip() in ("1", "true")
