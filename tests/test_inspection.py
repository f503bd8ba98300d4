"""Inventory -> `status.hardware` and the HardwareData resource, with baremetal-operator's rules.

The cases in tests/inspection_data/ are real inventories: this development machine's, recorded
by hand from /proc, lsblk and ip, and public Ironic, ironic-inspector, ironic-python-agent and
baremetal-operator fixtures re-typed as facts; each file says where its inventory comes from,
and its expected output is written by hand from the upstream rules (never produced by this
module). The tables below pin one rule each, and the malformed documents the errors.

Every test runs on both implementations: the native converter behind `metal3.inspection` and
the Python one it replaced (tests/inspection_reference.py), which must agree everywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest

import inspection_reference
import metal3.inspection
from api.examples import crd_schema
from metal3.api.hardware import HardwareDetails
from metal3.api.hardwaredata import HardwareData
from metal3.api.model import Model
from metal3.api.structural import admit
from metal3.inspection import InventoryError, hardware_data_manifest

DATA = Path(__file__).parent / "inspection_data"
CASES = sorted(DATA.glob("*.json"))
IMPLEMENTATIONS = {"native": metal3.inspection, "reference": inspection_reference}


class Implementation(Protocol):
    def hardware_details_from_inventory(
        self, inventory: Mapping[str, Any] | bytes | str
    ) -> dict[str, Any]: ...
    def parse_inventory(self, raw: bytes | str) -> dict[str, Any]: ...


@pytest.fixture(params=list(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> Implementation:
    """The implementation under test: `metal3.inspection` (native) or the Python reference."""
    module: Implementation = IMPLEMENTATIONS[request.param]
    return module


def load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = orjson.loads(path.read_bytes())
    assert case["source"] and case["inventory"] and case["expected"]
    return case


def nic(**fields: Any) -> dict[str, Any]:
    """An inventory interface with a MAC (the rest as given)."""
    return {"name": "eth0", "mac_address": "52:54:00:12:34:56", **fields}


def convert(impl: Implementation, **inventory: Any) -> dict[str, Any]:
    inventory.setdefault("interfaces", [nic()])
    return impl.hardware_details_from_inventory(inventory)


def undeclared_fields(model: Any, path: str = "") -> list[str]:
    """Paths of JSON keys the HardwareDetails types do not declare (a misspelt field)."""
    if isinstance(model, list):
        return [p for i, item in enumerate(model) for p in undeclared_fields(item, f"{path}[{i}]")]
    if not isinstance(model, Model):
        return []
    found = [f"{path}.{key}" for key in model.extra]
    for f in model.fields():
        found += undeclared_fields(getattr(model, f.attr), f"{path}.{f.schema.json_name}")
    return found


# --- real inventories -----------------------------------------------------------------------


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_real_inventory_converts_to_the_expected_hardware(path: Path, impl: Implementation) -> None:
    case = load_case(path)
    inventory = case["inventory"]
    before = copy.deepcopy(inventory)

    result = impl.hardware_details_from_inventory(inventory)

    assert result == case["expected"]
    assert inventory == before  # the input is left as it was (flags are sorted in a copy)
    raw = orjson.dumps(inventory)
    assert impl.hardware_details_from_inventory(raw) == case["expected"]
    assert impl.hardware_details_from_inventory(raw.decode()) == case["expected"]
    assert impl.parse_inventory(raw) == inventory


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_real_inventory_hardware_is_valid_for_the_api(path: Path, impl: Implementation) -> None:
    """Every key is a declared field and the HardwareData resource passes the CRD as is."""
    expected = load_case(path)["expected"]
    result = impl.hardware_details_from_inventory(load_case(path)["inventory"])
    model = HardwareDetails.from_json(result)
    assert undeclared_fields(model) == []
    assert model.to_json() == expected

    manifest = hardware_data_manifest("metal3", "node-0", "0b5c-uid", result)
    pruned, errors = admit(manifest, crd_schema("hardwaredata"))
    assert pruned == []
    assert errors == []
    assert manifest["spec"]["hardware"] == expected


# --- one rule at a time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frequency", "clock"),
    [
        ("2100.084", 2100),
        ("2499.5", 2500),  # half away from zero, as Go's math.Round
        ("2499.4999", 2499),
        ("3800.0000", 3800),
        ("  800", 800),
        ("1.5e3", 1500),
        ("2.5GHz", 3),  # the number the text starts with
        ("0.4", None),  # rounds to 0: left out
        ("", None),
        ("unknown", None),
        (None, None),
    ],
)
def test_clock_megahertz_from_frequency(
    frequency: str | None, clock: int | None, impl: Implementation
) -> None:
    cpu = convert(impl, cpu={"frequency": frequency})["cpu"]
    assert cpu.get("clockMegahertz") == clock


@pytest.mark.parametrize(
    ("speed_mbps", "gbps"),
    [(None, None), (-1, None), (0, None), (999, None), (1000, 1), (2500, 2), (25000, 25)],
)
def test_speed_gbps_is_truncated(
    speed_mbps: int | None, gbps: int | None, impl: Implementation
) -> None:
    assert (
        convert(impl, interfaces=[nic(speed_mbps=speed_mbps)])["nics"][0].get("speedGbps") == gbps
    )


@pytest.mark.parametrize(
    ("vendor", "product", "model"),
    [
        ("0x8086", "0x1572", "0x8086 0x1572"),
        (None, "0x0001", "0x0001"),  # leading space trimmed
        ("0x8086", None, "0x8086 "),  # trailing one kept, as upstream
        ("", "", None),
        (None, None, None),
    ],
)
def test_nic_model_is_vendor_and_product(
    vendor: str | None, product: str | None, model: str | None, impl: Implementation
) -> None:
    result = convert(impl, interfaces=[nic(vendor=vendor, product=product)])
    assert result["nics"][0].get("model") == model


@pytest.mark.parametrize(
    ("disk", "name", "alternate_names", "disk_type"),
    [
        ({"name": "/dev/sda", "rotational": True}, "/dev/sda", ["/dev/sda"], "HDD"),
        ({"name": "/dev/sda", "rotational": False}, "/dev/sda", ["/dev/sda"], "SSD"),
        ({"name": "/dev/vdb"}, "/dev/vdb", ["/dev/vdb"], "SSD"),
        ({"name": "/dev/nvme1n1", "rotational": False}, "/dev/nvme1n1", ["/dev/nvme1n1"], "NVME"),
        ({"name": "/dev/nvme1n1", "rotational": True}, "/dev/nvme1n1", ["/dev/nvme1n1"], "HDD"),
        (
            {"name": "/dev/nvme0n1", "by_path": "/dev/disk/by-path/pci-0000:81:00.0-nvme-1"},
            "/dev/disk/by-path/pci-0000:81:00.0-nvme-1",
            ["/dev/nvme0n1", "/dev/disk/by-path/pci-0000:81:00.0-nvme-1"],
            "NVME",  # the type still goes by the kernel name
        ),
        ({"name": "/dev/loop3", "by_path": ""}, "/dev/loop3", ["/dev/loop3"], "SSD"),
    ],
)
def test_storage_name_and_type(
    disk: dict[str, Any],
    name: str,
    alternate_names: list[str],
    disk_type: str,
    impl: Implementation,
) -> None:
    (storage,) = convert(impl, disks=[disk])["storage"]
    assert storage["name"] == name
    assert storage["alternateNames"] == alternate_names
    assert storage["type"] == disk_type
    assert storage.get("rotational") == (True if disk.get("rotational") else None)


def test_storage_fields_are_renamed_and_empty_ones_left_out(impl: Implementation) -> None:
    disk = {
        "name": "/dev/sdc",
        "size": 18000207937536,
        "vendor": "SEAGATE",
        "model": "ST18000NM004J",
        "serial": "ZR500001",
        "wwn": "0x5000c500a1b2c3d4",
        "wwn_vendor_extension": "0x0001",
        "wwn_with_extension": "0x5000c500a1b2c3d40x0001",
        "hctl": "0:0:2:0",
        "tran": "sas",
        "logical_sectors": 512,
    }
    assert convert(impl, disks=[disk])["storage"] == [
        {
            "name": "/dev/sdc",
            "alternateNames": ["/dev/sdc"],
            "type": "SSD",
            "sizeBytes": 18000207937536,
            "vendor": "SEAGATE",
            "model": "ST18000NM004J",
            "serialNumber": "ZR500001",
            "wwn": "0x5000c500a1b2c3d4",
            "wwnVendorExtension": "0x0001",
            "wwnWithExtension": "0x5000c500a1b2c3d40x0001",
            "hctl": "0:0:2:0",
        }
    ]
    assert convert(impl, disks=[{"name": "/dev/sdd", "size": 0, "serial": "", "hctl": None}])[
        "storage"
    ] == [{"name": "/dev/sdd", "alternateNames": ["/dev/sdd"], "type": "SSD"}]


@pytest.mark.parametrize(
    ("pxe_interface", "mac", "pxe"),
    [
        ("52:54:00:12:34:56", "52:54:00:12:34:56", True),
        ("01-52-54-00-12-34-56", "52:54:00:12:34:56", True),  # pxelinux BOOTIF form
        ("01-52-54-00-AB-CD-EF", "52:54:00:ab:cd:ef", True),
        ("52:54:00:AB:CD:EF", "52:54:00:ab:cd:ef", True),  # both lower-cased (see module doc)
        ("52:54:00:12:34:57", "52:54:00:12:34:56", False),
        (None, "52:54:00:12:34:56", False),
        ("", "52:54:00:12:34:56", False),
        # An InfiniBand address is a MAC for the API but not for Ironic's PXE check.
        (
            "a0:00:02:20:fe:80:00:00:00:00:00:00:7c:fe:90:03:00:29:26:52",
            "a0:00:02:20:fe:80:00:00:00:00:00:00:7c:fe:90:03:00:29:26:52",
            False,
        ),
    ],
)
def test_pxe_is_the_boot_interface(
    pxe_interface: str | None, mac: str, pxe: bool, impl: Implementation
) -> None:
    result = convert(impl, boot={"pxe_interface": pxe_interface}, interfaces=[nic(mac_address=mac)])
    assert result["nics"][0].get("pxe", False) is pxe


def test_pxe_needs_a_named_interface(impl: Implementation) -> None:
    """Ironic leaves a record without a name out of its interfaces, so it is never PXE."""
    result = convert(
        impl,
        boot={"pxe_interface": "52:54:00:12:34:56"},
        interfaces=[{"mac_address": "52:54:00:12:34:56", "ipv4_address": "192.0.2.9"}],
    )
    assert result["nics"] == [{"mac": "52:54:00:12:34:56", "ip": "192.0.2.9"}]


def test_dual_stack_entries_share_nothing_mutable(impl: Implementation) -> None:
    tlvs = [[1, "04aabbccddeeff"], [127, "0080c20300650776" + "6c616e313031"]]
    iface = nic(ipv4_address="192.0.2.1", ipv6_address="2001:db8::1", lldp=tlvs)
    first, second = convert(impl, interfaces=[iface])["nics"]
    assert first["ip"] == "192.0.2.1" and second["ip"] == "2001:db8::1"
    assert first["vlans"] == second["vlans"] == [{"id": 101, "name": "vlan101"}]
    first["vlans"][0]["name"] = "changed"
    first["lldp"]["portID"] = "changed"
    assert second["vlans"] == [{"id": 101, "name": "vlan101"}]
    assert second["lldp"] == {"switchID": "aa:bb:cc:dd:ee:ff"}
    assert list(second) == list(first)  # the same key order as the first entry


def _hex(text: str) -> str:
    return text.encode().hex()


@pytest.mark.parametrize(
    ("tlvs", "lldp", "vlans", "vlan_id"),
    [
        # Chassis ID subtypes: MAC, IPv6 network address, interface name; port ID: MAC.
        ([[1, "04B8599F000001"]], {"switchID": "b8:59:9f:00:00:01"}, None, None),
        (
            [[1, "0502" + "20010db8000000000000000000000001"]],
            {"switchID": "2001:db8::1"},
            None,
            None,
        ),
        ([[1, "06" + _hex("mgmt0")]], {"switchID": "mgmt0"}, None, None),
        ([[2, "03aabbccddeeff"]], {"portID": "aa:bb:cc:dd:ee:ff"}, None, None),
        # A TLV that cannot be read is skipped and the next of its kind counts.
        ([[1, "00ff"], [1, "07" + _hex("sw2")]], {"switchID": "sw2"}, None, None),
        ([[2, "06" + _hex("circuit")], [2, "05" + _hex("Eth1")]], {"portID": "Eth1"}, None, None),
        ([[5, "zz"], [5, _hex("leaf-1")]], {"switchSystemName": "leaf-1"}, None, None),
        ([[5, "ff00"], [5, _hex("leaf-2")]], {"switchSystemName": "leaf-2"}, None, None),
        # An empty value holds its place (Ironic keeps the first) but is left out.
        ([[5, ""], [5, _hex("leaf-3")]], None, None, None),
        # 802.1Q: the untagged VLAN (first wins), VLAN names (all, NUL padding stripped).
        ([[127, "0080c2010064"], [127, "0080c20100c8"]], None, None, 100),
        ([[127, "0080C20300C806" + _hex("vlan20")]], None, [{"id": 200, "name": "vlan20"}], None),
        (
            [[127, "0080c20300c8" + "04" + _hex("v2") + "0000"]],
            None,
            [{"id": 200, "name": "v2"}],
            None,
        ),
        ([[127, "0080c203000100"]], None, [{"id": 1}], None),
        ([[127, "0080c2030000" + "02" + _hex("v0")]], None, [{"name": "v0"}], None),
        # VLAN IDs past 4094 are not VLANs the API can hold: ignored.
        ([[127, "0080c2010fff"], [127, "0080c2010ffe"]], None, None, 4094),
        ([[127, "0080c2030fff02" + _hex("xx")]], None, None, None),
        # Other organisations' TLVs and other 802.1Q subtypes carry nothing for us.
        ([[127, "00120f0405ea"], [127, "0080c2060058"]], None, None, None),
    ],
)
def test_lldp_facts(
    tlvs: list[list[Any]],
    lldp: dict[str, str] | None,
    vlans: list[dict[str, Any]] | None,
    vlan_id: int | None,
    impl: Implementation,
) -> None:
    (result,) = convert(impl, interfaces=[nic(lldp=tlvs)])["nics"]
    assert result.get("lldp") == lldp
    assert result.get("vlans") == vlans
    assert result.get("vlanId") == vlan_id


def test_lldp_is_read_for_the_first_64_interfaces_only(impl: Implementation) -> None:
    """As Ironic's parse_lldp hook, which stops at 64 interfaces."""
    interfaces = [
        nic(name=f"eth{i}", mac_address=f"52:54:00:00:00:{i:02x}", lldp=[[2, "05" + _hex(f"p{i}")]])
        for i in range(66)
    ]
    nics = convert(impl, interfaces=interfaces)["nics"]
    assert [n.get("lldp") for n in nics[62:]] == [{"portID": "p62"}, {"portID": "p63"}, None, None]


def test_switch_tlvs_shared_by_nics_give_each_nic_its_own_values(impl: Implementation) -> None:
    shared = [
        [1, "04b8599f000001"],
        [127, "0080c2010064"],
        [127, "0080c203006407" + _hex("vlan100")],
    ]
    interfaces = [
        nic(
            name=f"eth{i}",
            mac_address=f"52:54:00:00:00:0{i}",
            lldp=[*shared, [2, "05" + _hex(f"Et{i}")]],
        )
        for i in range(2)
    ]
    first, second = convert(impl, interfaces=interfaces)["nics"]
    assert first["lldp"] == {"switchID": "b8:59:9f:00:00:01", "portID": "Et0"}
    assert second["lldp"] == {"switchID": "b8:59:9f:00:00:01", "portID": "Et1"}
    assert first["vlans"] == second["vlans"] == [{"id": 100, "name": "vlan100"}]
    assert first["vlans"] is not second["vlans"] and first["vlans"][0] is not second["vlans"][0]
    assert first["vlanId"] == second["vlanId"] == 100


def test_system_vendor_firmware_and_hostname(impl: Implementation) -> None:
    result = convert(
        impl,
        system_vendor={
            "manufacturer": "Dell Inc.",
            "product_name": "PowerEdge R650",
            "serial_number": "",
            "firmware": {"vendor": "Dell Inc.", "version": "1.6.5", "date": "04/12/2022"},
        },
        hostname="",
        memory={"physical_mb": 262144, "total": 270000000000},
    )
    assert result["systemVendor"] == {"manufacturer": "Dell Inc.", "productName": "PowerEdge R650"}
    assert result["firmware"] == {
        "bios": {"date": "04/12/2022", "vendor": "Dell Inc.", "version": "1.6.5"}
    }
    assert result["ramMebibytes"] == 262144
    assert "hostname" not in result
    # IPA's own key is build_date; it wins over date.
    firmware = {"build_date": "2019-07-10", "date": "other"}
    assert convert(impl, system_vendor={"firmware": firmware})["firmware"] == {
        "bios": {"date": "2019-07-10"}
    }


def test_sections_that_are_always_written(impl: Implementation) -> None:
    """Go writes plain structs even when empty: systemVendor, firmware.bios and cpu."""
    assert convert(impl) == {
        "systemVendor": {},
        "firmware": {"bios": {}},
        "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56"}],
        "cpu": {},
    }


def test_hardware_data_manifest_is_owned_by_its_host(impl: Implementation) -> None:
    details = convert(impl, hostname="node-7")
    manifest = hardware_data_manifest("lab", "node-7", "6d1e-uid", details)
    assert manifest == {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "HardwareData",
        "metadata": {
            "name": "node-7",
            "namespace": "lab",
            "ownerReferences": [
                {
                    "apiVersion": "metal3.io/v1alpha1",
                    "kind": "BareMetalHost",
                    "name": "node-7",
                    "uid": "6d1e-uid",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"hardware": details},
    }
    from_model = hardware_data_manifest(
        "lab", "node-7", "6d1e-uid", HardwareDetails.from_json(details)
    )
    assert from_model == manifest
    assert HardwareData.from_json(manifest).to_json() == manifest


# --- malformed documents --------------------------------------------------------------------

GOOD_NIC = {"name": "eth0", "mac_address": "52:54:00:12:34:56"}


def doc(**fields: Any) -> dict[str, Any]:
    return {"interfaces": [GOOD_NIC], **fields}


MALFORMED: list[tuple[str, bytes | dict[str, Any] | list[Any], str, str]] = [
    ("not json", b'{"interfaces": [', "", "not valid JSON"),
    ("not an object", b"[]", "", "expected an object, got array"),
    ("no interfaces", {}, ".interfaces", "no network interfaces"),
    ("empty interfaces", {"interfaces": []}, ".interfaces", "no network interfaces"),
    ("interfaces object", {"interfaces": {}}, ".interfaces", "expected an array, got object"),
    (
        "interface string",
        {"interfaces": ["eth0"]},
        ".interfaces[0]",
        "expected an object, got string",
    ),
    (
        "name number",
        {"interfaces": [{"name": 5}]},
        ".interfaces[0].name",
        "expected a string, got integer",
    ),
    (
        "speed string",
        {"interfaces": [{**GOOD_NIC, "speed_mbps": "1000"}]},
        ".interfaces[0].speed_mbps",
        "expected an integer, got string",
    ),
    (
        "speed float",
        {"interfaces": [GOOD_NIC, {**GOOD_NIC, "speed_mbps": 1000.5}]},
        ".interfaces[1].speed_mbps",
        "expected an integer, got number",
    ),
    (
        "speed boolean",
        {"interfaces": [{**GOOD_NIC, "speed_mbps": True}]},
        ".interfaces[0].speed_mbps",
        "expected an integer, got boolean",
    ),
    (
        "mac not a MAC",
        {"interfaces": [{**GOOD_NIC, "mac_address": "banana!"}]},
        ".interfaces[0].mac_address",
        "'banana!' is not a MAC address",
    ),
    (
        "lldp string",
        {"interfaces": [{**GOOD_NIC, "lldp": "01ab"}]},
        ".interfaces[0].lldp",
        "expected an array, got string",
    ),
    (
        "lldp item too short",
        {"interfaces": [{**GOOD_NIC, "lldp": [[1, "04aabbccddeeff"], [2]]}]},
        ".interfaces[0].lldp[1]",
        "expected a [type, hex value] pair",
    ),
    (
        "lldp item object",
        {"interfaces": [{**GOOD_NIC, "lldp": [{"type": 1, "value": "04"}]}]},
        ".interfaces[0].lldp[0]",
        "expected a [type, hex value] pair",
    ),
    (
        "lldp type string",
        {"interfaces": [{**GOOD_NIC, "lldp": [["1", "04aabbccddeeff"]]}]},
        ".interfaces[0].lldp[0]",
        "expected [integer, string], got [string, string]",
    ),
    (
        "lldp value number",
        {"interfaces": [{**GOOD_NIC, "lldp": [[5, 7]]}]},
        ".interfaces[0].lldp[0]",
        "expected [integer, string], got [integer, integer]",
    ),
    ("disks object", doc(disks={}), ".disks", "expected an array, got object"),
    ("disk null", doc(disks=[None]), ".disks[0]", "expected an object, got null"),
    (
        "disk size string",
        doc(disks=[{"name": "/dev/sda", "size": "10"}]),
        ".disks[0].size",
        "expected an integer, got string",
    ),
    (
        "disk rotational string",
        doc(disks=[{"name": "/dev/sda"}, {"name": "/dev/sdb", "rotational": "true"}]),
        ".disks[1].rotational",
        "expected a boolean, got string",
    ),
    ("cpu array", doc(cpu=[]), ".cpu", "expected an object, got array"),
    ("cpu count string", doc(cpu={"count": "4"}), ".cpu.count", "expected an integer, got string"),
    (
        "cpu frequency number",
        doc(cpu={"frequency": 2100}),
        ".cpu.frequency",
        "expected a string, got integer",
    ),
    (
        "cpu flags string",
        doc(cpu={"flags": "fpu sse"}),
        ".cpu.flags",
        "expected an array, got string",
    ),
    (
        "cpu flag number",
        doc(cpu={"flags": ["fpu", 1]}),
        ".cpu.flags[1]",
        "expected a string, got integer",
    ),
    ("memory number", doc(memory=5), ".memory", "expected an object, got integer"),
    (
        "physical_mb string",
        doc(memory={"physical_mb": "2048"}),
        ".memory.physical_mb",
        "expected an integer, got string",
    ),
    (
        "physical_mb false",
        doc(memory={"physical_mb": False}),
        ".memory.physical_mb",
        "expected an integer, got boolean",
    ),
    (
        "system_vendor string",
        doc(system_vendor="Dell"),
        ".system_vendor",
        "expected an object, got string",
    ),
    (
        "manufacturer number",
        doc(system_vendor={"manufacturer": 1}),
        ".system_vendor.manufacturer",
        "expected a string, got integer",
    ),
    (
        "firmware string",
        doc(system_vendor={"firmware": "1.0"}),
        ".system_vendor.firmware",
        "expected an object, got string",
    ),
    (
        "build_date number",
        doc(system_vendor={"firmware": {"build_date": 20190710}}),
        ".system_vendor.firmware.build_date",
        "expected a string, got integer",
    ),
    ("boot string", doc(boot="uefi"), ".boot", "expected an object, got string"),
    (
        "pxe_interface number",
        doc(boot={"pxe_interface": 1}),
        ".boot.pxe_interface",
        "expected a string, got integer",
    ),
    (
        "pxe_interface false",
        doc(boot={"pxe_interface": False}),
        ".boot.pxe_interface",
        "expected a string, got boolean",
    ),
    ("hostname number", doc(hostname=1), ".hostname", "expected a string, got integer"),
]


@pytest.mark.parametrize(
    ("document", "path", "message"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_inventory_is_refused_naming_the_field(
    document: bytes | dict[str, Any], path: str, message: str, impl: Implementation
) -> None:
    raw = document if isinstance(document, bytes) else orjson.dumps(document)
    with pytest.raises(InventoryError) as parsed:
        impl.parse_inventory(raw)
    assert parsed.value.path == path
    assert message in parsed.value.message
    assert str(parsed.value).startswith(f"inventory{path}: ")
    with pytest.raises(InventoryError) as converted:
        impl.hardware_details_from_inventory(raw)
    assert str(converted.value) == str(parsed.value)
    if isinstance(document, dict):
        with pytest.raises(InventoryError) as from_dict:
            impl.hardware_details_from_inventory(document)
        assert str(from_dict.value) == str(parsed.value)


def test_a_mapping_that_is_not_a_dict_is_read_and_anything_else_refused(
    impl: Implementation,
) -> None:
    from types import MappingProxyType

    assert impl.hardware_details_from_inventory(MappingProxyType({"interfaces": [GOOD_NIC]}))[
        "nics"
    ]
    with pytest.raises(InventoryError, match=r"^inventory: expected an object, got integer$"):
        impl.hardware_details_from_inventory(42)  # type: ignore[arg-type]
