"""The native inventory converter against the Python reference and orjson, case by case.

`metal3.inspection` converts with the Rust core (rust/inventory); tests/inspection_reference.py
is the Python implementation it replaced. Here both meet thousands of generated inventories
(realistic ones, then the same with random fields broken, and their JSON text with random bytes
changed): both must give the same JSON, byte for byte, or the same error (path and message).
The JSON text rules are orjson's: whatever orjson refuses, the converter refuses as not JSON,
and it reads whatever orjson reads. The tables the Rust code carries from Python's Unicode
database (spaces and digits in `frequency`) are checked against the running Python's, and the
IPv6 text against the `ipaddress` module.
"""

from __future__ import annotations

import copy
import random
import unicodedata
from collections.abc import Callable
from typing import Any

import orjson
import pytest

import inspection_reference as reference
from metal3 import _native
from metal3.inspection import InventoryError, hardware_details_from_inventory, parse_inventory

SEEDS = range(40)
INVENTORIES = 5  # generated per seed
MUTATIONS = 40  # broken copies of each seed's first inventory
TEXT_EDITS = 40  # edited texts of it

Outcome = tuple[str, Any]


def outcome(convert: Callable[[Any], dict[str, Any]], document: Any) -> Outcome:
    """("ok", JSON bytes: key order counts) or ("error", (path, message))."""
    try:
        return "ok", orjson.dumps(convert(document))
    except InventoryError as exc:
        assert str(exc) == f"inventory{exc.path}: {exc.message}"
        return "error", (exc.path, exc.message)


def assert_same(document: Any) -> Outcome:
    """Native and reference agree on a document (raw JSON text or parsed)."""
    native = outcome(hardware_details_from_inventory, document)
    expected = outcome(reference.hardware_details_from_inventory, document)
    if native[0] == expected[0] == "error" and expected[1][1].startswith("not valid JSON"):
        # Both refuse the text; the parser's words after "not valid JSON" may differ.
        assert native[1][0] == ""
        assert native[1][1].startswith("not valid JSON: ")
    else:
        assert native == expected, document
    return native


# --- generated inventories -------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return data.hex()


def random_tlv(rng: random.Random) -> list[Any]:
    """A TLV as an agent sends it, often well-formed, sometimes anything an LLDP peer sends."""
    kind = rng.choice([0, 1, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 127, 127, 127, 127, 200])
    text = rng.choice(["leaf-01", "Ethernet1/7", "mgmt0", "", "sw\u00e9", "x" * 40])
    payload: bytes
    if kind in (1, 2):
        subtype = rng.randrange(9)
        body = rng.choice(
            [
                text.encode(),
                bytes(rng.randrange(256) for _ in range(rng.choice([0, 3, 6, 7]))),
                bytes([rng.choice([1, 2, 6, 7, 9])])
                + bytes(rng.randrange(256) for _ in range(rng.choice([0, 3, 4, 6, 16, 17]))),
                b"\xff\xfe",
            ]
        )
        payload = bytes([subtype]) + body
    elif kind == 127:
        oui = rng.choice([b"\x00\x80\xc2", b"\x00\x80\xc2", b"\x00\x12\x0f", b"\x00\x80\xc3"])
        subtype = rng.choice([1, 1, 3, 3, 3, 2, 4])
        vid = rng.choice([0, 1, 100, 4094, 4095, 65535])
        name = rng.choice([b"vlan100", b"", b"v\x00\x00", b"\xc3\x28", "n\u00e9t".encode()])
        length = rng.choice([len(name), len(name), len(name) + 1, max(0, len(name) - 1)])
        payload = oui + bytes([subtype]) + vid.to_bytes(2, "big")
        if subtype == 3:
            payload += bytes([length]) + name
        payload = payload[: rng.choice([len(payload)] * 5 + [2, 3, 4, 5])]
    else:
        payload = rng.choice([text.encode()] * 5 + [b"\xed\xa0\x80", b"y" * 511, b"z" * 512])
    value = _hex(payload)
    value = rng.choice([value] * 6 + [value.upper(), value[:-1], value + "zz", "\u0663" + value])
    return [kind, value]


def random_inventory(seed: int) -> dict[str, Any]:
    """An inventory of random size and content, in ironic-python-agent's format."""
    rng = random.Random(seed)
    interfaces = []
    macs = [":".join(f"{rng.randrange(256):02x}" for _ in range(6)) for _ in range(12)]
    for i in range(rng.choice([1, 2, 3, 8, 66])):
        mac = rng.choice(macs)
        interfaces.append(
            {
                "name": rng.choice([f"eth{i}", f"ens{i}f0", "", None]),
                "mac_address": rng.choice([mac, mac.upper(), None, f"link/ether {mac} brd"]),
                "ipv4_address": rng.choice([f"10.0.{i}.2", None, ""]),
                "ipv6_address": rng.choice([f"fe80::{i:x}", None, ""]),
                "vendor": rng.choice(["0x8086", None, "", " "]),
                "product": rng.choice(["0x1572", None, ""]),
                "speed_mbps": rng.choice([None, -1, 0, 999, 1000, 25000, 2**63 - 1, -(2**63)]),
                "lldp": rng.choice([None, []] + [[random_tlv(rng) for _ in range(12)]] * 4),
                "pci_address": rng.choice(["0000:3b:00.0", None]),
                "has_carrier": rng.random() < 0.5,
            }
        )
    disks = []
    for i in range(rng.choice([0, 1, 4, 20])):
        disks.append(
            {
                "name": rng.choice([f"/dev/sd{chr(97 + i % 26)}", f"/dev/nvme{i}n1", "", None]),
                "by_path": rng.choice([None, "", f"/dev/disk/by-path/pci-0000:81:00.0-{i}"]),
                "rotational": rng.choice([True, False, None]),
                "size": rng.choice([0, 512, 18000207937536, 2**64 - 1, None]),
                "vendor": rng.choice(["SEAGATE", "", None]),
                "model": rng.choice(["ST18000NM004J", None]),
                "serial": rng.choice([f"ZR{i:06d}", "", None]),
                "wwn": rng.choice(["0x5000c500a1b2c3d4", None]),
                "wwn_vendor_extension": rng.choice(["0x0001", None]),
                "wwn_with_extension": rng.choice(["0x5000c500a1b2c3d40x0001", None]),
                "hctl": rng.choice(["0:0:2:0", None, ""]),
                "tran": "sas",
            }
        )
    pxe_forms = [*macs[:3], "01-" + macs[0].replace(":", "-")]
    flags = ["fpu", "vme", "sse4_2", "avx512f", "avx512fx", "avx512bw", "avx", "a", "\u00e9t\u00e9"]
    return {
        "interfaces": interfaces,
        "disks": disks,
        "cpu": {
            "model_name": rng.choice(["Intel(R) Xeon(R)", None, ""]),
            "frequency": rng.choice(["2100.084", "2499.5", " 800", "1e400", "x", "", None]),
            "count": rng.choice([0, 1, 224, None]),
            "architecture": rng.choice(["x86_64", "aarch64", None]),
            "flags": rng.sample(flags, rng.randrange(len(flags) + 1)),
        },
        "memory": rng.choice([{"physical_mb": 24576, "total": 1}, {}, None]),
        "system_vendor": rng.choice(
            [
                None,
                {},
                {
                    "manufacturer": "Dell Inc.",
                    "product_name": rng.choice(["PowerEdge R650", None]),
                    "serial_number": rng.choice(["", "ABC"]),
                    "firmware": rng.choice(
                        [None, {}, {"vendor": "Dell", "version": "1.6", "build_date": "04/12"}]
                    ),
                },
            ]
        ),
        "boot": rng.choice([None, {}, {"pxe_interface": rng.choice(pxe_forms)}]),
        "hostname": rng.choice(["node-1", "", None]),
        "bmc_address": "10.10.0.17",
    }


ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**64 - 1,
    -(2**63),
    1.5,
    "",
    "x",
    "52:54:00:12:34:56",
    "0080c2030064",
    [],
    [1, "04aabbccddeeff"],
    [[1]],
    {},
    {"name": "x"},
]


def mutate(document: Any, rng: random.Random) -> Any:
    """A copy with one value somewhere replaced, removed or duplicated."""
    document = copy.deepcopy(document)
    containers = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            containers.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            containers.append(node)
            for value in node:
                walk(value)

    walk(document)
    node = rng.choice(containers)
    if not node:
        if isinstance(node, dict):
            node["name"] = rng.choice(ODD_VALUES)
        else:
            node.append(rng.choice(ODD_VALUES))
        return document
    key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
    action = rng.random()
    if action < 0.7:
        node[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif action < 0.85:
        del node[key]
    elif isinstance(node, list):
        node.append(copy.deepcopy(node[key]))
    else:
        node[key] = copy.deepcopy(node)
    return document


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_inventories_convert_alike(seed: int) -> None:
    for number in range(INVENTORIES):
        document = random_inventory(seed * INVENTORIES + number)
        raw = orjson.dumps(document)
        assert assert_same(raw)[0] == "ok"
        assert assert_same(document) == assert_same(raw)
        assert assert_same(raw.decode()) == assert_same(raw)


@pytest.mark.parametrize("seed", SEEDS)
def test_broken_inventories_are_refused_alike(seed: int) -> None:
    rng = random.Random(1000 + seed)
    original = random_inventory(seed * INVENTORIES)
    outcomes = set()
    for _ in range(MUTATIONS):
        document = mutate(original, rng)
        if rng.random() < 0.3:
            document = mutate(document, rng)
        raw = orjson.dumps(document)
        result = assert_same(raw)
        assert assert_same(document) == result
        outcomes.add(result[0])
    assert "error" in outcomes  # the mutations do break inventories


JSON_NOISE = [
    *(b"", b" ", b",", b":", b"[", b"]", b"{", b"}", b'"', b"\\", b"0", b"-", b"e", b"."),
    *(b"n", b"\x00", b"\xff", b"\xc3", b"\\u", b"\\ud800", b"1e400", b"tru", b"\x0c"),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_json_text_is_read_as_orjson_reads_it(seed: int) -> None:
    """Random edits of the text: refused as not JSON exactly when orjson refuses it."""
    rng = random.Random(2000 + seed)
    raw = orjson.dumps(random_inventory(seed * INVENTORIES))
    for _ in range(TEXT_EDITS):
        at = rng.randrange(len(raw) + 1)
        cut = rng.choice([0, 0, 1, 2])
        edited = raw[:at] + rng.choice(JSON_NOISE) + raw[at + cut :]
        try:
            orjson.loads(edited)
            orjson_reads = True
        except orjson.JSONDecodeError:
            orjson_reads = False
        kind, detail = assert_same(edited)
        not_json = kind == "error" and detail[1].startswith("not valid JSON")
        assert not_json != orjson_reads, edited


def in_unknown_field(value: bytes) -> bytes:
    return b'{"interfaces":[{"name":"eth0"}],"extra":' + value + b"}"


JSON_CASES = [
    # depth: orjson reads 1024 nested arrays or objects, refuses 1025
    b"[" * 1022 + b"]" * 1022,
    b"[" * 1023 + b"]" * 1023,
    b'{"a":' * 1022 + b"1" + b"}" * 1022,
    b'{"a":' * 1023 + b"1" + b"}" * 1023,
    # numbers
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"1.7976931348623157e308",
    b"1.7976931348623158e308",
    b"1.7976931348623159e308",
    b"9" * 308,
    b"9" * 309,
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"-0",
    b"-0.0",
    b"01",
    b"1.",
    b".5",
    b"1e",
    b"1E+5",
    b"+1",
    b"NaN",
    b"Infinity",
    # strings
    b'"\\ud83d\\ude00"',
    b'"\\ud83d"',
    b'"\\ude00"',
    b'"\\ud83d\\u0041"',
    b'"\\u0000"',
    b'"\\/"',
    b'"\\a"',
    b'"\\U0041"',
    b'"\x01"',
    b'"\x7f"',
    b'"\xe2\x80\xa8"',
    b'"\xed\xa0\x80"',
    b'"\xff"',
    b'"\xc3\xa9"',
    # structure
    b"[1,]",
    b'{"a":1,}',
    b'{"a" 1}',
    b"{1:1}",
    b"[1 2]",
    b"tru",
    b"True",
    b"nul",
    b"[\x0c]",
    b"[\t\r\n ]",
]


@pytest.mark.parametrize("value", JSON_CASES, ids=[repr(v[:24]) for v in JSON_CASES])
def test_json_rules_are_orjsons(value: bytes) -> None:
    """Each case where an unused value sits and where a used one does (`hostname`)."""
    for raw in (
        in_unknown_field(value),
        b'{"interfaces":[{"name":"eth0"}],"hostname":' + value + b"}",
        b'{"interfaces":[{"name":"eth0","lldp":[[5,' + value + b"]]}]}",
    ):
        try:
            orjson.loads(raw)
            orjson_reads = True
        except orjson.JSONDecodeError:
            orjson_reads = False
        kind, detail = assert_same(raw)
        assert (kind == "error" and detail[0] == "" and detail[1].startswith("not valid")) != (
            orjson_reads
        ), raw


def test_text_around_the_document() -> None:
    for raw in [b"", b"  ", b"\xef\xbb\xbf{}", b"{} x", b'{"interfaces":[{}]}\n\t ', b"{}{}"]:
        assert_same(raw)
    assert assert_same(b' \n{"interfaces":[{"name":"a"}]} \r\n')[0] == "ok"


def test_duplicate_and_escaped_keys_the_last_wins() -> None:
    raw = (
        b'{"interfaces":[{"name":"a","n\\u0061me":"b","name":"c","name":"\\u00e9"}],'
        b'"hostname":1,"hostname":"h"}'
    )
    result = assert_same(raw)
    assert orjson.loads(result[1])["nics"] == [{"name": "\u00e9"}]


# --- what the Rust code carries from Python ------------------------------------------------


def test_frequency_spaces_and_digits_are_pythons() -> None:
    """Every character Python's `\\s` and `\\d` match (this Python's Unicode tables)."""
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    digits = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Nd"]
    near = [chr(c) for c in (0x1B, 0x20, 0x21, 0x85, 0xB2, 0x200B, 0x2F, 0x3A, 0xFEFF)]
    frequencies = [f"{s}1{s}" for s in spaces + near] + [f"{d}{d}.{d}" for d in digits + near]
    frequencies += [f"1e{d}" for d in digits] + [f".{d}" for d in digits]
    inventory = {"interfaces": [{"name": "eth0"}], "cpu": {}}
    for frequency in frequencies:
        inventory["cpu"]["frequency"] = frequency
        assert_same(orjson.dumps(inventory))
        assert_same(inventory)


def test_ipv6_text_is_pythons() -> None:
    rng = random.Random(7)
    groups = [0, 0, 0, 1, 0xFFFF, 0xDB8]
    addresses = [bytes(16), bytes(15) + b"\x01", bytes(10) + b"\xff\xff\x01\x02\x03\x04"]
    for _ in range(400):
        addresses.append(b"".join(rng.choice(groups).to_bytes(2, "big") for _ in range(8)))
    for address in addresses:
        tlv = [1, "0502" + address.hex()]
        inventory = {"interfaces": [{"name": "eth0", "lldp": [tlv]}]}
        result = assert_same(orjson.dumps(inventory))
        import ipaddress

        expected = str(ipaddress.IPv6Address(address))
        assert orjson.loads(result[1])["nics"][0]["lldp"] == {"switchID": expected}


# --- the native module's own contract --------------------------------------------------------


def test_errors_carry_path_and_message() -> None:
    with pytest.raises(InventoryError) as info:
        _native.hardware_details_from_json(b'{"interfaces":[{"mac_address":"x\'y"}]}')
    error = info.value
    assert isinstance(error, ValueError)
    assert type(error).__module__ == "metal3._native"
    assert error.path == ".interfaces[0].mac_address"
    assert error.message == '"x\'y" is not a MAC address'  # Python's repr of the value
    assert str(error) == f"inventory{error.path}: {error.message}"
    with pytest.raises(TypeError, match="bytes or str, not bytearray"):
        _native.hardware_details_from_json(bytearray(b"{}"))  # type: ignore[arg-type]


def test_str_with_lone_surrogates_is_not_json() -> None:
    for convert in (hardware_details_from_inventory, reference.hardware_details_from_inventory):
        with pytest.raises(InventoryError, match=r"^inventory: not valid JSON: str is not valid"):
            convert('{"interfaces":[{"name":"\ud800"}]}')


def test_parsed_documents_hold_json_values_only() -> None:
    """Where the native converter departs from the reference: values JSON cannot hold."""
    good = {"name": "eth0"}

    def refused(document: dict[str, Any]) -> tuple[str, str]:
        with pytest.raises(InventoryError) as info:
            hardware_details_from_inventory(document)
        return info.value.path, info.value.message

    # A tuple where an array belongs, as the reference says too.
    assert refused({"interfaces": (good,)}) == (".interfaces", "expected an array, got tuple")
    assert assert_same({"interfaces": (good,)})[0] == "error"
    # Integers beyond 64 bits and strings with lone surrogates: refused (the reference passes
    # them through, into a status no JSON encoder can write).
    assert refused({"interfaces": [{**good, "speed_mbps": 2**64}]}) == (
        ".interfaces[0].speed_mbps",
        "expected an integer, got integer beyond 64 bits",
    )
    assert refused({"interfaces": [{"name": "\ud800"}]}) == (
        ".interfaces[0].name",
        "expected a string, got string with a lone surrogate",
    )
    # A TLV pair given as a tuple is not a pair.
    lldp = [(1, "04aabbccddeeff")]
    assert refused({"interfaces": [{**good, "lldp": lldp}]}) == (
        ".interfaces[0].lldp[0]",
        "expected a [type, hex value] pair",
    )
    # A TLV value with a lone surrogate is not hex: skipped, as the reference skips it.
    lldp = [[5, "\ud800"], [5, "6c6561662d31"]]
    document = {"interfaces": [{**good, "lldp": lldp}]}
    assert hardware_details_from_inventory(document)["nics"][0]["lldp"] == {
        "switchSystemName": "leaf-1"
    }
    assert_same(document)
    # Subclasses are not the JSON types, as for the reference.
    assert_same({"interfaces": [{"name": type("Name", (str,), {})("eth0")}]})
    assert_same({"interfaces": [{**good, "speed_mbps": True}]})


def test_parse_inventory_returns_the_whole_document() -> None:
    document = random_inventory(3)
    raw = orjson.dumps(document)
    assert parse_inventory(raw) == document == reference.parse_inventory(raw)
