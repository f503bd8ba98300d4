"""Inventory -> `status.hardware`, as the operator receives inventories: raw JSON bytes in.

Ours: `metal3.inspection.hardware_details_from_inventory(raw)`, the operator's path: the native
converter (rust/inventory via `metal3._native`) reads the JSON text, checks every field it
uses, decodes the LLDP TLVs and builds the result's dicts, in one pass. The baseline, in this
file, is what a first implementation would be: stdlib `json.loads`, then upstream's two steps
written plainly (Ironic's processing: the PXE interface, every LLDP TLV decoded per interface;
baremetal-operator's conversion: the project's `HardwareDetails` model objects built field by
field and written with `to_json()`). Both produce the same JSON for every inventory here, and
ours the same as the Python reference implementation, key order included (asserted), so the
speed is not from doing less.

Inventories are generated at realistic sizes: a small node (2 NICs, 2 disks), a typical server
(8 NICs, 8 disks) and a storage server (64 NICs, 48 disks), the NICs with a link cabled to a
pair of leaf switches that send a full LLDPDU. Reported: CPU µs per inventory for both and the
ratio (best of interleaved batches, process time); target ≥ 5x at each size. Quick mode
(METAL3_BENCH_QUICK=1) measures fewer batches, in about a second.
"""

from __future__ import annotations

import binascii
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from inspection_reference import hardware_details_from_inventory as reference
from metal3.api.hardware import (
    BIOS,
    CPU,
    LLDP,
    NIC,
    VLAN,
    Firmware,
    HardwareDetails,
    HardwareSystemVendor,
    Storage,
)
from metal3.inspection import hardware_details_from_inventory, parse_inventory

QUICK = os.environ.get("METAL3_BENCH_QUICK") == "1"
BATCHES = 10 if QUICK else 30  # the ratio uses the best batch of each, interleaved
TARGET = 5.0  # the target, asserted at full size (`./dev bench`)
# Quick mode (CI, 10 batches on a shared 2-core machine) asserts a floor below the target: the
# small inventory sits near 5x (17 µs against 88 µs, mostly CPython's object creation), and a
# load spike has measured it at 3.9x. The figures printed are the measured ones either way.
QUICK_FLOOR = 3.0
SIZES = {"small-2nic-2disk": (2, 2), "server-8nic-8disk": (8, 8), "storage-64nic-48disk": (64, 48)}
FIGURES: dict[str, dict[str, float]] = {}
# Real CPU flags (this development machine's, recorded in the tests' inventory data).
FLAGS = orjson.loads(
    (Path(__file__).parents[1] / "tests/inspection_data/this-machine.json").read_bytes()
)["inventory"]["cpu"]["flags"]


# --- realistic inventories --------------------------------------------------------------------


def _hex(text: str) -> str:
    return text.encode().hex()


def lldpdu(switch: int, port: int) -> list[list[Any]]:
    """The TLVs a leaf switch sends on a port: IDs, descriptions, capabilities, 802.1/802.3."""
    vlans = (100 + switch, 200 + switch, 300 + switch)
    return [
        [1, "04" + f"b8599f0000{switch:02x}"],  # chassis ID: the switch's MAC
        [2, "05" + _hex(f"Ethernet1/{port}")],  # port ID: interface name
        [3, "0078"],
        [4, _hex(f"server rack 7 port {port} (bond0 member)")],
        [5, _hex(f"leaf-07{'ab'[switch]}.dc1.example.net")],
        [6, _hex("Arista Networks EOS version 4.28.3M running on an Arista DCS-7050SX3-48YC8")],
        [7, "00140014"],
        [8, "0501c000020f020000000100"],
        [127, "00120f01036c110010"],
        [127, "00120f0405ee"],
        [127, "0080c201" + f"{vlans[0]:04x}"],
        *[
            [127, "0080c203" + f"{v:04x}" + f"{len(f'vlan{v}'):02x}" + _hex(f"vlan{v}")]
            for v in vlans
        ],
        [0, ""],
    ]


def inventory(nics: int, disks: int, seed: int = 7) -> dict[str, Any]:
    """An IPA inventory of a server with `nics` interfaces and `disks` disks."""
    rng = random.Random(seed)
    macs = [f"3c:fd:fe:{i >> 8:02x}:{i & 0xFF:02x}:{rng.randrange(256):02x}" for i in range(nics)]
    interfaces = []
    for i, mac in enumerate(macs):
        carrier = i % 4 != 3
        interfaces.append(
            {
                "name": f"ens{1 + i // 2}f{i % 2}",
                "mac_address": mac,
                "ipv4_address": f"10.{i}.0.17" if i % 4 == 0 else None,
                "ipv6_address": (f"fe80::3efd:feff:fe{i:02x}:{i:04x}" if carrier else None),
                "has_carrier": carrier,
                "lldp": lldpdu(i % 2, i // 2 + 1) if carrier else None,
                "vendor": "0x8086" if i % 2 == 0 else "0x15b3",
                "product": "0x159b" if i % 2 == 0 else "0x101d",
                "client_id": None,
                "biosdevname": None,
                "speed_mbps": 25000 if carrier else -1,
                "pxe_enabled": i == 0,
                "driver": "ice" if i % 2 == 0 else "mlx5_core",
                "pci_address": f"0000:{0x3B + i // 8:02x}:00.{i % 8}",
            }
        )
    disk_list = []
    for i in range(disks):
        nvme = i >= disks - max(1, disks // 12)
        name = f"/dev/nvme{i}n1" if nvme else f"/dev/sd{chr(97 + i % 26) * (1 + i // 26)}"
        disk_list.append(
            {
                "name": name,
                "model": "SAMSUNG MZQL23T8HCLS" if nvme else "ST18000NM004J",
                "size": 3840755982336 if nvme else 18000207937536,
                "rotational": not nvme,
                "wwn": f"eui.36344730{i:08x}" if nvme else f"0x5000c500{i:08x}",
                "serial": f"S64HNE0R{i:06d}" if nvme else f"ZR5{i:05d}",
                "vendor": None if nvme else "SEAGATE",
                "wwn_with_extension": None if nvme else f"0x5000c500{i:08x}",
                "wwn_vendor_extension": None,
                "hctl": None if nvme else f"0:0:{i}:0",
                "by_path": (
                    f"/dev/disk/by-path/pci-0000:{0x81 + i:02x}:00.0-nvme-1"
                    if nvme
                    else f"/dev/disk/by-path/pci-0000:3b:00.0-sas-phy{i}-lun-0"
                ),
                "logical_sectors": 512 if not nvme else 4096,
                "physical_sectors": 4096,
                "tran": "nvme" if nvme else "sas",
            }
        )
    return {
        "cpu": {
            "model_name": "Intel(R) Xeon(R) Platinum 8480+",
            "frequency": "3800.0000",
            "count": 224,
            "architecture": "x86_64",
            "flags": list(FLAGS),
            "socket_count": 2,
        },
        "memory": {"total": 1081547436032, "physical_mb": 1048576},
        "disks": disk_list,
        "interfaces": interfaces,
        "system_vendor": {
            "product_name": "SYS-221H-TNR",
            "serial_number": "S452391X3C12345",
            "manufacturer": "Supermicro",
            "firmware": {
                "vendor": "American Megatrends International, LLC.",
                "version": "2.1",
                "build_date": "04/12/2024",
            },
        },
        "boot": {"current_boot_mode": "uefi", "pxe_interface": "01-" + macs[0].replace(":", "-")},
        "bmc_address": "10.10.0.17",
        "bmc_v6address": "::/0",
        "bmc_mac": "3c:ec:ef:00:00:17",
        "hostname": "storage-node-17.dc1.example.net",
    }


# --- the baseline: a first implementation ---------------------------------------------------------


def _baseline_lldp(tlvs: list[list[Any]]) -> dict[str, Any]:
    """Ironic's parse_lldp, plainly: decode every TLV, keep the first value of each name."""
    nv: dict[str, Any] = {}
    for tlv_type, tlv_value in tlvs:
        try:
            data = binascii.unhexlify(tlv_value)
        except (binascii.Error, ValueError):
            continue
        try:
            if tlv_type == 1 and data:
                subtype = data[0]
                if subtype == 4 and len(data) >= 7:
                    nv.setdefault("switch_chassis_id", data[1:7].hex(":"))
                elif subtype in (1, 2, 3, 6, 7):
                    nv.setdefault("switch_chassis_id", data[1:].decode("utf-8"))
            elif tlv_type == 2 and data:
                subtype = data[0]
                if subtype == 3 and len(data) >= 7:
                    nv.setdefault("switch_port_id", data[1:7].hex(":"))
                elif subtype in (1, 2, 5, 7):
                    nv.setdefault("switch_port_id", data[1:].decode("utf-8"))
            elif tlv_type == 5:
                nv.setdefault("switch_system_name", data.decode("utf-8"))
            elif tlv_type == 127 and len(data) >= 4 and data[:3].hex() == "0080c2":
                subtype, payload = data[3], data[4:]
                if subtype == 1 and len(payload) >= 2:
                    nv.setdefault("switch_port_untagged_vlan_id", int.from_bytes(payload[:2]))
                elif subtype == 3 and len(payload) >= 3:
                    length = payload[2]
                    if len(payload) >= 3 + length:
                        name = payload[3 : 3 + length].decode("utf-8").rstrip("\x00")
                        vid = int.from_bytes(payload[:2])
                        nv.setdefault("switch_port_vlans", []).append({"id": vid, "name": name})
        except UnicodeDecodeError:
            continue
    return nv


def baseline(raw: bytes) -> dict[str, Any]:
    """json.loads, Ironic's processed data, then the model objects baremetal-operator builds."""
    inv = json.loads(raw)
    # Ironic: which interface is the PXE one, and the LLDP facts, by interface name.
    pxe_mac = (inv.get("boot") or {}).get("pxe_interface")
    if pxe_mac and "-" in pxe_mac:
        pxe_mac = pxe_mac.split("-", 1)[1].replace("-", ":")
    pxe_mac = pxe_mac.lower() if pxe_mac else None
    pxe: dict[str, bool] = {}
    parsed_lldp: dict[str, dict[str, Any]] = {}
    for i, iface in enumerate(inv["interfaces"]):
        mac = iface.get("mac_address")
        if iface.get("name") and mac:
            pxe[iface["name"]] = mac.lower() == pxe_mac
        if i < 64 and iface.get("lldp"):
            nv = _baseline_lldp(iface["lldp"])
            if nv:
                parsed_lldp[iface.get("name") or ""] = nv
    # baremetal-operator: the HardwareDetails model.
    nics = []
    for iface in inv["interfaces"]:
        nv = parsed_lldp.get(iface.get("name") or "", {})
        vlans = [
            VLAN(id=v["id"] or None, name=v["name"] or None)
            for v in nv.get("switch_port_vlans", [])
        ]
        lldp = LLDP(
            switch_id=nv.get("switch_chassis_id") or None,
            port_id=nv.get("switch_port_id") or None,
            switch_system_name=nv.get("switch_system_name") or None,
        )
        has_lldp = lldp.switch_id or lldp.port_id or lldp.switch_system_name
        speed = iface.get("speed_mbps") or 0
        model = f"{iface.get('vendor') or ''} {iface.get('product') or ''}".lstrip(" ")
        ipv4, ipv6 = iface.get("ipv4_address"), iface.get("ipv6_address")
        ips = [ipv4] if ipv4 or not ipv6 else []
        if ipv6:
            ips.append(ipv6)
        for ip in ips:
            nics.append(
                NIC(
                    name=iface.get("name") or None,
                    model=model or None,
                    mac=iface.get("mac_address") or None,
                    ip=ip or None,
                    speed_gbps=int(speed / 1000) or None,
                    vlans=vlans or None,
                    vlan_id=nv.get("switch_port_untagged_vlan_id") or None,
                    pxe=pxe.get(iface.get("name") or "") or None,
                    lldp=lldp if has_lldp else None,
                    pci_address=iface.get("pci_address") or None,
                )
            )
    storage = []
    for disk in inv.get("disks") or []:
        name = disk.get("name") or ""
        names = [name]
        if disk.get("by_path"):
            names.append(disk["by_path"])
        if disk.get("rotational"):
            disk_type = "HDD"
        elif name.startswith("/dev/nvme"):
            disk_type = "NVME"
        else:
            disk_type = "SSD"
        storage.append(
            Storage(
                name=names[-1] or None,
                alternate_names=names,
                rotational=disk.get("rotational") or None,
                type=disk_type,
                size_bytes=disk.get("size") or None,
                vendor=disk.get("vendor") or None,
                model=disk.get("model") or None,
                serial_number=disk.get("serial") or None,
                wwn=disk.get("wwn") or None,
                wwn_vendor_extension=disk.get("wwn_vendor_extension") or None,
                wwn_with_extension=disk.get("wwn_with_extension") or None,
                hctl=disk.get("hctl") or None,
            )
        )
    cpu = inv.get("cpu") or {}
    try:
        clock = float((cpu.get("frequency") or "").split()[0])
    except (ValueError, IndexError):
        clock = 0.0
    system = inv.get("system_vendor") or {}
    firmware = system.get("firmware") or {}
    details = HardwareDetails(
        system_vendor=HardwareSystemVendor(
            manufacturer=system.get("manufacturer") or None,
            product_name=system.get("product_name") or None,
            serial_number=system.get("serial_number") or None,
        ),
        firmware=Firmware(
            bios=BIOS(
                date=firmware.get("build_date") or firmware.get("date") or None,
                vendor=firmware.get("vendor") or None,
                version=firmware.get("version") or None,
            )
        ),
        ram_mebibytes=(inv.get("memory") or {}).get("physical_mb") or None,
        nics=nics or None,
        storage=storage or None,
        cpu=CPU(
            arch=cpu.get("architecture") or None,
            model=cpu.get("model_name") or None,
            clock_megahertz=int(clock + 0.5) or None,
            flags=sorted(cpu.get("flags") or []) or None,
            count=cpu.get("count") or None,
        ),
        hostname=inv.get("hostname") or None,
    )
    return details.to_json()


def ours(raw: bytes) -> dict[str, Any]:
    """The operator's path: the native converter, JSON text to `status.hardware` in one pass."""
    return hardware_details_from_inventory(raw)


# --- measurements -----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(SIZES), ids=list(SIZES))
def payload(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    nics, disks = SIZES[request.param]
    return request.param, orjson.dumps(inventory(nics, disks))


def _per_call(fn: Callable[[bytes], object], raw: bytes, calls: int) -> float:
    """CPU seconds per call (process time: the other processes on the machine don't count)."""
    start = time.process_time()
    for _ in range(calls):
        fn(raw)
    return (time.process_time() - start) / calls


def test_same_output(payload: tuple[str, bytes]) -> None:
    """Both paths write the same `status.hardware`, and it is a valid HardwareDetails."""
    _, raw = payload
    result = ours(raw)
    assert result == baseline(raw)
    assert orjson.dumps(result) == orjson.dumps(reference(raw))  # key order too
    assert result == hardware_details_from_inventory(parse_inventory(raw))
    assert HardwareDetails.from_json(result).to_json() == result
    assert result["nics"][0]["pxe"] is True
    assert result["nics"][0]["lldp"]["portID"] == "Ethernet1/1"


def test_ours(benchmark: Any, payload: tuple[str, bytes]) -> None:
    _, raw = payload
    assert benchmark(ours, raw)["cpu"]["count"] == 224


def test_baseline(benchmark: Any, payload: tuple[str, bytes]) -> None:
    _, raw = payload
    assert benchmark(baseline, raw)["cpu"]["count"] == 224


def test_ratio(payload: tuple[str, bytes]) -> None:
    """Interleaved batches of both paths in the same process; the best batch of each counts."""
    size, raw = payload
    calls = max(3, int(5e-3 / max(_per_call(baseline, raw, 3), 1e-6)))
    ours_s: list[float] = []
    base_s: list[float] = []
    for _ in range(BATCHES):
        ours_s.append(_per_call(ours, raw, calls))
        base_s.append(_per_call(baseline, raw, calls))
    ratio = min(base_s) / min(ours_s)
    FIGURES[size] = {
        "ours_us": min(ours_s) * 1e6,
        "baseline_us": min(base_s) * 1e6,
        "ratio": ratio,
        "bytes": len(raw),
    }
    floor = QUICK_FLOOR if QUICK else TARGET
    assert ratio >= floor, f"{size}: {ratio:.2f}x the baseline, target {TARGET}x (floor {floor}x)"


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints µs per inventory and the ratio for each size."""
    lines = [f"inspection figures ({'quick' if QUICK else 'full'} mode, target ≥ {TARGET}x)"]
    for size, f in FIGURES.items():
        lines.append(
            f"  {size:<22} {f['bytes'] / 1024:6.1f} KiB  ours {f['ours_us']:8.1f} µs  "
            f"json+models {f['baseline_us']:8.1f} µs  ratio {f['ratio']:5.2f}x"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert set(FIGURES) == set(SIZES)
