"""Root-device selection with Ironic's semantics: a table of cases per BareMetalHost hint,
no-match errors that name the hints, ties, the no-hint default, and invalid hints.

The disks are inventory entries as ironic-python-agent reports them for a server with a
RAID-controller volume, a SATA disk, an NVMe drive and a USB stick (values re-typed from the
shapes of IPA inventories; the NVMe has no vendor or hctl, as IPA reports NVMe drives)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loopdev import LoopDevices
from metal3.agent.hints import (
    InvalidHintsError,
    InvalidInventoryError,
    NoRootDeviceError,
    select_root_device,
)

GiB = 1 << 30

PERC = {
    "name": "/dev/sda",
    "model": "PERC H730P Mini",
    "size": 479559942144,  # 446.6 GiB
    "rotational": False,
    "wwn": "0x6d0946606d4a8f00",
    "serial": "006d4a8f00a84f4a2b0e8e1d0e9d8f77",
    "vendor": "DELL",
    "wwn_with_extension": "0x6d0946606d4a8f002b0e8e1d0e9d8f77",
    "wwn_vendor_extension": "0x2b0e8e1d0e9d8f77",
    "hctl": "0:2:0:0",
    "by_path": "/dev/disk/by-path/pci-0000:18:00.0-scsi-0:2:0:0",
    "logical_sectors": 512,
    "physical_sectors": 512,
    "tran": None,
}
SATA = {
    "name": "/dev/sdb",
    "model": "ST1000NM0033-9ZM",
    "size": 1000204886016,  # 931.5 GiB
    "rotational": True,
    "wwn": "0x5000c50079a2f1c3",
    "serial": "Z1W4ABCD",
    "vendor": "ATA",
    "wwn_with_extension": "0x5000c50079a2f1c3",
    "wwn_vendor_extension": None,
    "hctl": "1:0:0:0",
    "by_path": "/dev/disk/by-path/pci-0000:00:17.0-ata-1",
    "logical_sectors": 512,
    "physical_sectors": 4096,
    "tran": "sata",
}
NVME = {
    "name": "/dev/nvme0n1",
    "model": "Samsung SSD 970 EVO Plus 1TB",
    "size": 1000204886016,  # 931.5 GiB, as large as SATA
    "rotational": False,
    "wwn": "eui.0025385b91b0d2c4",
    "serial": "S4EWNX0N123456A",
    "vendor": None,
    "wwn_with_extension": "eui.0025385b91b0d2c4",
    "wwn_vendor_extension": None,
    "hctl": None,
    "by_path": "/dev/disk/by-path/pci-0000:3b:00.0-nvme-1",
    "logical_sectors": 512,
    "physical_sectors": 512,
    "tran": "nvme",
}
USB = {
    "name": "/dev/sdc",
    "model": "Cruzer Blade",
    "size": 4004511744,  # 3.7 GiB: below Ironic's 4 GiB default minimum
    "rotational": False,
    "wwn": None,
    "serial": "",
    "vendor": "SanDisk",
    "wwn_with_extension": None,
    "wwn_vendor_extension": None,
    "hctl": "6:0:0:0",
    "by_path": "/dev/disk/by-path/pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0",
    "logical_sectors": 512,
    "physical_sectors": 512,
    "tran": "usb",
}
DISKS = [PERC, SATA, NVME, USB]

CHOSEN: list[tuple[str, dict[str, Any], str]] = [
    # deviceName: exact (case-insensitive) on the name, or on by_path for by-path links
    ("deviceName", {"deviceName": "/dev/sdb"}, "/dev/sdb"),
    ("deviceName", {"deviceName": "/dev/SDB"}, "/dev/sdb"),
    ("deviceName", {"deviceName": "/dev/nvme0n1"}, "/dev/nvme0n1"),
    ("deviceName", {"deviceName": "/dev/disk/by-path/pci-0000:3b:00.0-nvme-1"}, "/dev/nvme0n1"),
    ("deviceName", {"deviceName": " /dev/sdc "}, "/dev/sdc"),
    # hctl: exact
    ("hctl", {"hctl": "1:0:0:0"}, "/dev/sdb"),
    ("hctl", {"hctl": "6:0:0:0"}, "/dev/sdc"),
    # model / vendor: the hint is a substring, case-insensitive, spaces and all
    ("model", {"model": "st1000"}, "/dev/sdb"),
    ("model", {"model": "SSD 970 EVO"}, "/dev/nvme0n1"),
    ("model", {"model": "PERC H730P Mini"}, "/dev/sda"),
    ("vendor", {"vendor": "dell"}, "/dev/sda"),
    ("vendor", {"vendor": "Disk"}, "/dev/sdc"),
    ("vendor", {"vendor": "none"}, "/dev/nvme0n1"),  # a null field reads as "none"
    # serialNumber: exact, case-insensitive
    ("serialNumber", {"serialNumber": "z1w4abcd"}, "/dev/sdb"),
    ("serialNumber", {"serialNumber": "S4EWNX0N123456A"}, "/dev/nvme0n1"),
    # minSizeGigabytes: size / 2**30 >= N, not rounded; the first large enough in order
    ("minSizeGigabytes", {"minSizeGigabytes": 1}, "/dev/sda"),
    ("minSizeGigabytes", {"minSizeGigabytes": 446}, "/dev/sda"),
    ("minSizeGigabytes", {"minSizeGigabytes": 447}, "/dev/sdb"),
    ("minSizeGigabytes", {"minSizeGigabytes": 931}, "/dev/sdb"),
    # wwn, wwnWithExtension, wwnVendorExtension: exact
    ("wwn", {"wwn": "0x5000C50079A2F1C3"}, "/dev/sdb"),
    ("wwn", {"wwn": "eui.0025385b91b0d2c4"}, "/dev/nvme0n1"),
    ("wwnWithExtension", {"wwnWithExtension": "0x6d0946606d4a8f002b0e8e1d0e9d8f77"}, "/dev/sda"),
    ("wwnWithExtension", {"wwnWithExtension": "0x5000c50079a2f1c3"}, "/dev/sdb"),
    ("wwnVendorExtension", {"wwnVendorExtension": "0x2b0e8e1d0e9d8f77"}, "/dev/sda"),
    # rotational: a boolean, or a string Ironic reads as one
    ("rotational", {"rotational": True}, "/dev/sdb"),
    ("rotational", {"rotational": False}, "/dev/sda"),
    ("rotational", {"rotational": "true"}, "/dev/sdb"),
    ("rotational", {"rotational": "0"}, "/dev/sda"),
    ("rotational", {"rotational": "Yes"}, "/dev/sdb"),
    # several hints: all must match
    ("all", {"rotational": False, "minSizeGigabytes": 500}, "/dev/nvme0n1"),
    ("all", {"vendor": "ata", "rotational": True, "hctl": "1:0:0:0"}, "/dev/sdb"),
    ("all", {"model": "samsung", "serialNumber": "S4EWNX0N123456A"}, "/dev/nvme0n1"),
    # empty hints are left out, as the operator leaves them out: the default applies
    ("empty", {"deviceName": "", "model": "", "minSizeGigabytes": 0}, "/dev/sda"),
    ("empty", {"rotational": None, "wwn": None}, "/dev/sda"),
]

UNMATCHED: list[tuple[str, dict[str, Any]]] = [
    ("deviceName", {"deviceName": "/dev/sd"}),  # exact, not a prefix
    ("deviceName", {"deviceName": "/dev/sdd"}),
    ("deviceName", {"deviceName": "/dev/disk/by-path/pci-0000:3b:00.0-nvme-2"}),
    ("hctl", {"hctl": "1:0:0"}),
    ("model", {"model": "EVO Plus 2TB"}),
    ("vendor", {"vendor": "Seagate"}),
    ("serialNumber", {"serialNumber": "Z1W4ABC"}),  # exact, not a prefix
    ("minSizeGigabytes", {"minSizeGigabytes": 932}),  # 931.5 GiB is below 932
    ("wwn", {"wwn": "0x5000c50079a2f1c"}),
    ("wwnWithExtension", {"wwnWithExtension": "0x2b0e8e1d0e9d8f77"}),
    ("wwnVendorExtension", {"wwnVendorExtension": "0x6d0946606d4a8f00"}),
    ("rotational", {"rotational": True, "vendor": "dell"}),
    ("all", {"model": "samsung", "minSizeGigabytes": 2000}),
    ("all", {"vendor": "ata", "rotational": False}),
]


@pytest.mark.parametrize(
    ("field", "hints", "expected"), CHOSEN, ids=[f"{c[0]}-{i}" for i, c in enumerate(CHOSEN)]
)
def test_hint_chooses_the_disk(field: str, hints: dict[str, Any], expected: str) -> None:
    chosen = select_root_device(DISKS, hints)
    assert chosen["name"] == expected
    assert chosen == next(d for d in DISKS if d["name"] == expected)


@pytest.mark.parametrize(
    ("field", "hints"), UNMATCHED, ids=[f"{c[0]}-{i}" for i, c in enumerate(UNMATCHED)]
)
def test_unmatched_hints_are_an_error_naming_them(field: str, hints: dict[str, Any]) -> None:
    with pytest.raises(NoRootDeviceError) as refused:
        select_root_device(DISKS, hints)
    message = str(refused.value)
    assert "no disk matches the root device hints" in message
    for key in hints:
        assert f'"{key}"' in message
    for disk in DISKS:
        assert f"{disk['name']}: " in message, "each disk's mismatch is explained"


def test_no_match_explains_each_disk() -> None:
    with pytest.raises(NoRootDeviceError) as refused:
        select_root_device([PERC, SATA], {"minSizeGigabytes": 1000})
    assert str(refused.value) == (
        'no disk matches the root device hints {"minSizeGigabytes": 1000} '
        "(/dev/sda: size 479559942144 (446.62 GiB) is below 1000 GiB; "
        "/dev/sdb: size 1000204886016 (931.51 GiB) is below 1000 GiB)"
    )


def test_ties_go_to_the_first_disk_in_inventory_order() -> None:
    twin = {**SATA, "name": "/dev/sdd", "serial": "Z1W4WXYZ", "hctl": "2:0:0:0"}
    hints = {"model": "ST1000NM0033", "rotational": True}
    assert select_root_device([SATA, twin], hints)["name"] == "/dev/sdb"
    assert select_root_device([twin, SATA], hints)["name"] == "/dev/sdd"
    # SATA and NVMe are the same size: with only a size hint, order decides too
    assert select_root_device([NVME, SATA], {"minSizeGigabytes": 900})["name"] == "/dev/nvme0n1"


def test_without_hints_the_smallest_disk_of_at_least_4_gib() -> None:
    assert select_root_device(DISKS, None)["name"] == "/dev/sda"
    assert select_root_device(DISKS, {})["name"] == "/dev/sda"
    assert select_root_device([SATA, NVME, USB], None)["name"] == "/dev/nvme0n1"  # tie: name
    assert select_root_device([NVME, SATA], None)["name"] == "/dev/nvme0n1"
    exactly = {**USB, "name": "/dev/sdz", "size": 4 * GiB}
    assert select_root_device([SATA, exactly, USB], None)["name"] == "/dev/sdz"
    assert select_root_device([SATA, {**exactly, "size": str(4 * GiB)}], None)["name"] == (
        "/dev/sdz"
    )
    with pytest.raises(NoRootDeviceError, match="no disk of at least 4 GiB") as refused:
        select_root_device([USB], None)
    assert "/dev/sdc (4004511744 bytes)" in str(refused.value)


def test_disk_fields_that_are_null_or_empty() -> None:
    # a null field reads as "none" (Ironic's str(None)); an empty one matches nothing
    assert select_root_device(DISKS, {"hctl": "None"})["name"] == "/dev/nvme0n1"
    with pytest.raises(NoRootDeviceError):
        select_root_device([USB], {"serialNumber": "x"})
    unknown_rotation = {**SATA, "rotational": None}
    with pytest.raises(NoRootDeviceError):
        select_root_device([unknown_rotation], {"rotational": True})
    with pytest.raises(NoRootDeviceError):
        select_root_device([unknown_rotation], {"rotational": False})
    with pytest.raises(NoRootDeviceError, match="is not a size in bytes"):
        select_root_device([{**SATA, "size": None}], {"minSizeGigabytes": 1})
    with pytest.raises(NoRootDeviceError, match="the inventory lists no disks"):
        select_root_device([], {"model": "x"})


@pytest.mark.parametrize(
    ("hints", "message"),
    [
        ({"disk": "/dev/sda"}, r"unknown root device hint\(s\) disk; valid hints are deviceName"),
        ({"name": "/dev/sda"}, r"unknown root device hint\(s\) name"),  # Ironic's key, not BMH's
        ({"model": 5}, "model must be a string, not 5"),
        ({"serialNumber": ["a"]}, "serialNumber must be a string"),
        ({"hctl": "  "}, "hctl must not be blank"),
        ({"minSizeGigabytes": -1}, "minSizeGigabytes must not be negative, got -1"),
        ({"minSizeGigabytes": "10"}, 'minSizeGigabytes must be a whole number of GiB, not "10"'),
        ({"minSizeGigabytes": 1.5}, "minSizeGigabytes must be a whole number of GiB, not 1.5"),
        ({"minSizeGigabytes": True}, "minSizeGigabytes must be a whole number"),
        ({"rotational": "maybe"}, 'rotational must be true or false, not "maybe"'),
        ({"rotational": 2}, "rotational must be true or false, not 2"),
        ({"deviceName": "sda"}, "deviceName must be a /dev/ path"),
        ([("model", "x")], "root device hints must be an object, not list"),
    ],
)
def test_invalid_hints_are_refused(hints: Any, message: str) -> None:
    with pytest.raises(InvalidHintsError, match=message):
        select_root_device(DISKS, hints)


def test_invalid_disks_are_refused() -> None:
    with pytest.raises(InvalidInventoryError, match="disk #1 of the inventory is not an object"):
        select_root_device([PERC, "/dev/sdb"], None)  # type: ignore[list-item]
    with pytest.raises(InvalidInventoryError, match="must be a list, not str"):
        select_root_device("/dev/sda", None)  # type: ignore[arg-type]


@pytest.fixture
def dev_links() -> Iterator[list[Path]]:
    """Symlinks made under /dev by the test, removed afterwards (with the folders made)."""
    made: list[Path] = []
    yield made
    for path in reversed(made):
        if path.is_symlink():
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _make_link(made: list[Path], link: Path, target: Path) -> None:
    missing = [p for p in reversed(link.parents) if not p.exists()]
    for folder in missing:
        folder.mkdir()
        made.append(folder)
    link.symlink_to(target)
    made.append(link)


def test_device_name_symlink_matches_the_disk_it_points_to(
    loop_devices: LoopDevices, dev_links: list[Path]
) -> None:
    """A deviceName that is a link on this machine (a by-path or by-id link to a real loop
    device here) chooses the disk it resolves to, though the inventory does not list it."""
    dev = loop_devices.new(1 << 20)
    tag = uuid.uuid4().hex[:12]
    by_path = Path("/dev/disk/by-path") / f"metal3-test-{tag}"
    by_id = Path("/dev/disk/by-id") / f"metal3-test-{tag}"
    _make_link(dev_links, by_path, Path("../..") / dev.path.name)
    _make_link(dev_links, by_id, dev.path)
    assert os.path.realpath(by_path) == str(dev.path)
    disk = {**SATA, "name": str(dev.path), "by_path": None}
    disks = [PERC, disk, NVME]
    assert select_root_device(disks, {"deviceName": str(by_path)})["name"] == str(dev.path)
    assert select_root_device(disks, {"deviceName": str(by_id)})["name"] == str(dev.path)
    # an inventory from another machine: links here say nothing about its disks
    with pytest.raises(NoRootDeviceError):
        select_root_device(disks, {"deviceName": str(by_id)}, resolve_links=False)
    # the link's target must be the disk itself
    with pytest.raises(NoRootDeviceError):
        select_root_device([PERC, NVME], {"deviceName": str(by_path)})
