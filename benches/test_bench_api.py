"""Inspection parsing: HardwareDetails from JSON, against orjson's bare parse of the same bytes.

The ratio (typed parse / bare parse) is what to watch: the type layer's overhead on the path
that every inspection result and every informer update of a host goes through.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest

from metal3.api import BareMetalHost, HardwareDetails

QUICK = os.environ.get("METAL3_BENCH_QUICK") == "1"
NICS = 8 if QUICK else 64
DISKS = 4 if QUICK else 48


def inventory() -> dict[str, Any]:
    """A large server's inspection result: many NICs and disks, as a fleet of 4U nodes has."""
    return {
        "hostname": "storage-node-17",
        "ramMebibytes": 1048576,
        "systemVendor": {
            "manufacturer": "Supermicro",
            "productName": "SSG-6049P",
            "serialNumber": "S1",
        },
        "firmware": {"bios": {"date": "01/02/2025", "vendor": "AMI", "version": "3.8a"}},
        "cpu": {
            "arch": "x86_64",
            "model": "Intel(R) Xeon(R) Platinum 8480+",
            "clockMegahertz": 2000.0,
            "count": 224,
            "flags": [f"flag{i}" for i in range(120)],
        },
        "nics": [
            {
                "name": f"ens{i}",
                "mac": f"52:54:00:00:{i // 256:02x}:{i % 256:02x}",
                "ip": f"10.0.{i}.17",
                "model": "0x15b3 0x101d",
                "speedGbps": 100,
                "pxe": i == 0,
                "vlans": [{"id": v, "name": f"vlan{v}"} for v in range(100, 104)],
                "vlanId": 0,
            }
            for i in range(NICS)
        ],
        "storage": [
            {
                "name": f"/dev/disk/by-path/pci-0000:3b:00.0-sas-phy{i}-lun-0",
                "alternateNames": [f"/dev/sd{chr(97 + i % 26)}"],
                "type": "HDD",
                "rotational": True,
                "sizeBytes": 18000207937536,
                "vendor": "SEAGATE",
                "model": "ST18000NM004J",
                "serialNumber": f"ZR5{i:05d}",
                "wwn": f"0x5000c500{i:08x}",
                "hctl": f"0:0:{i}:0",
            }
            for i in range(DISKS)
        ],
    }


@pytest.fixture(scope="module")
def payload() -> bytes:
    return orjson.dumps(inventory())


def test_baseline_orjson_parse(benchmark: Any, payload: bytes) -> None:
    result = benchmark(orjson.loads, payload)
    assert len(result["storage"]) == DISKS


def test_hardware_details_parse(benchmark: Any, payload: bytes) -> None:
    result = benchmark(HardwareDetails.loads, payload)
    assert result.storage is not None and len(result.storage) == DISKS
    assert result.to_json() == orjson.loads(payload)


def test_host_round_trip(benchmark: Any, payload: bytes) -> None:
    host = {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": "n17", "namespace": "metal3"},
        "spec": {"online": True, "bmc": {"address": "ipmi://10.0.0.17", "credentialsName": "c"}},
        "status": {
            "operationalStatus": "OK",
            "errorMessage": "",
            "poweredOn": True,
            "provisioning": {"state": "provisioned", "ID": "x"},
            "hardware": orjson.loads(payload),
        },
    }
    raw = orjson.dumps(host)

    def round_trip() -> bytes:
        return BareMetalHost.loads(raw).dumps()

    assert orjson.loads(benchmark(round_trip)) == host
