"""Inventory and BIOS parsing on the Redfish samples that ship in the sushy wheel.

The fake driver of sushy-tools has no processors, memory or BIOS, so these parts are checked
against the DMTF-style samples in `sushy/tests/unit/json_samples`, served as a small Redfish
tree by a local HTTP server. Expected values are read from the same JSON files.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sushy

from metal3.bmc.address import parse_address
from metal3.bmc.credentials import Credentials
from metal3.bmc.errors import BMCRefusedError
from metal3.bmc.redfish import RedfishBMC

pytestmark = pytest.mark.anyio
SAMPLES = Path(sushy.__file__).parent / "tests" / "unit" / "json_samples"
SYSTEM = "/redfish/v1/Systems/437XR1138R2"
TREE = {
    "/redfish/v1/": "root.json",
    "/redfish/v1/Systems": "system_collection.json",
    SYSTEM: "system.json",
    f"{SYSTEM}/Processors": "processor_collection.json",
    f"{SYSTEM}/Processors/CPU1": "processor.json",
    f"{SYSTEM}/Processors/CPU2": "processor2.json",
    f"{SYSTEM}/Bios": "bios.json",
    f"{SYSTEM}/BIOS/Settings": "bios_settings.json",
    f"{SYSTEM}/EthernetInterfaces": "ethernet_interfaces_collection.json",
    f"{SYSTEM}/EthernetInterfaces/12446A3B0411": "ethernet_interfaces.json",
    f"{SYSTEM}/Storage": "storage_collection.json",
    f"{SYSTEM}/Storage/1": "storage.json",
    f"{SYSTEM}/Storage/1/Drives/32ADF365C6C1B7BD": "drive.json",
    f"{SYSTEM}/Storage/1/Drives/35D38F11ACEF7BD3": "drive2.json",
    f"{SYSTEM}/Storage/1/Drives/3D58ECBC375FD9F2": "drive3.json",
    f"{SYSTEM}/SimpleStorage": "simple_storage_collection.json",
    f"{SYSTEM}/SimpleStorage/1": "simple_storage.json",
    # storage.json lists a fourth drive with no sample: served as 404 on purpose
}


def sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return doc


class SampleTree:
    def __init__(self) -> None:
        self.patches: list[tuple[str, Any]] = []
        self.url = ""
        self.hidden: set[str] = set()  # paths answered with 404


@pytest.fixture(scope="module")
def tree() -> Iterator[SampleTree]:
    state = SampleTree()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes = b"{}") -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            name = TREE.get(path) or TREE.get(path.rstrip("/"))
            if name is None or path in state.hidden:
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            self._send(200, (SAMPLES / name).read_bytes())

        def do_PATCH(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.patches.append((self.path, json.loads(self.rfile.read(length) or b"null")))
            self._send(204, b"")

        def do_POST(self) -> None:
            self._send(405, b'{"error": {"message": "no sessions"}}')

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def bmc_for(tree: SampleTree, path: str = SYSTEM) -> RedfishBMC:
    address = parse_address(f"idrac-redfish+http://{tree.url.split('//')[1]}{path}")
    return RedfishBMC(address, Credentials("user", "pw"))


async def test_inventory_from_samples(tree: SampleTree) -> None:
    system = sample("system.json")
    processors = [sample("processor.json"), sample("processor2.json")]
    nic = sample("ethernet_interfaces.json")
    drives = [sample(name) for name in ("drive.json", "drive2.json", "drive3.json")]
    async with bmc_for(tree) as bmc:
        inventory = await bmc.inventory()
    assert inventory.manufacturer == system["Manufacturer"]
    assert inventory.model == system["Model"]
    assert inventory.serial_number == system["SerialNumber"]
    assert inventory.bios_version == system["BiosVersion"]
    assert inventory.memory_mib == system["MemorySummary"]["TotalSystemMemoryGiB"] * 1024
    assert inventory.health == system["Status"]["Health"]
    assert inventory.cpu.count == sum(p.get("TotalThreads") or 0 for p in processors)
    assert inventory.cpu.model == processors[0]["Model"]
    assert inventory.cpu.arch == processors[0]["ProcessorArchitecture"]
    assert inventory.cpu.max_speed_mhz == max(p.get("MaxSpeedMHz") or 0 for p in processors)
    assert [(n.mac, n.speed_mbps) for n in inventory.nics] == [
        (nic["MACAddress"].lower(), nic["SpeedMbps"])
    ]
    assert sorted(
        (d.size_bytes, d.serial_number, d.model, d.vendor) for d in inventory.drives
    ) == sorted(
        (d["CapacityBytes"], d["SerialNumber"], d["Model"], d["Manufacturer"]) for d in drives
    )
    assert all(d.rotational for d in inventory.drives)  # MediaType HDD


async def test_bios_attributes_from_samples(tree: SampleTree) -> None:
    async with bmc_for(tree) as bmc:
        attributes = await bmc.bios_attributes()
        assert attributes == sample("bios.json")["Attributes"]
        tree.patches.clear()
        await bmc.set_bios_attributes({"ProcTurboMode": "Disabled", "UsbControl": "UsbDisabled"})
    assert tree.patches == [
        (
            f"{SYSTEM}/BIOS/Settings",
            {"Attributes": {"ProcTurboMode": "Disabled", "UsbControl": "UsbDisabled"}},
        )
    ]


async def test_power_state_from_sample(tree: SampleTree) -> None:
    async with bmc_for(tree) as bmc:
        state = await bmc.power_state()
    assert state.value == sample("system.json")["PowerState"].lower()


async def test_missing_system_in_sample_tree(tree: SampleTree) -> None:
    async with bmc_for(tree, "/redfish/v1/Systems/absent") as bmc:
        with pytest.raises(BMCRefusedError, match="not found"):
            await bmc.inventory()


async def test_drives_from_simple_storage_when_storage_is_missing(tree: SampleTree) -> None:
    devices = sample("simple_storage.json")["Devices"]
    present = [d for d in devices if d["Status"]["State"] != "Absent"]
    tree.hidden = {f"{SYSTEM}/Storage"}
    try:
        async with bmc_for(tree) as bmc:
            inventory = await bmc.inventory()
    finally:
        tree.hidden = set()
    assert [(d.name, d.size_bytes, d.model) for d in inventory.drives] == [
        (d["Name"], d.get("CapacityBytes"), d.get("Model")) for d in present
    ]
