"""Names and labels of discovered hosts: DNS-safe, from the serial or the boot MAC, and label
values that the API server accepts."""

from __future__ import annotations

import re

import pytest

from metal3.discovery.labels import DISCOVERED_LABEL, hardware_labels, label_value
from metal3.discovery.naming import dns_label, fallback_name, host_name, usable_serial
from metal3.discovery.service import bmc_url, boot_mac

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.mark.parametrize(
    ("serial", "mac", "expected"),
    [
        ("LABSYS1A2B3C4D", "02:6d:33:00:05:00", "labsys1a2b3c4d"),
        ("  CZ J 123/45.B  ", "02:6d:33:00:05:00", "cz-j-123-45-b"),
        ("To Be Filled By O.E.M.", "02:6D:33:00:05:00", "02-6d-33-00-05-00"),
        ("0000000", "52:54:00:ab:cd:ef", "52-54-00-ab-cd-ef"),
        (None, "52:54:00:ab:cd:ef", "52-54-00-ab-cd-ef"),
        ("---", "52:54:00:ab:cd:ef", "52-54-00-ab-cd-ef"),  # nothing left of it
        ("X" * 100, "52:54:00:ab:cd:ef", "x" * 63),
    ],
)
def test_host_name_from_serial_else_mac(serial: str | None, mac: str, expected: str) -> None:
    name = host_name(serial, mac)
    assert name == expected
    assert DNS_LABEL.match(name) and len(name) <= 63


def test_placeholder_serials_are_not_identities() -> None:
    for junk in ("", "0", "Default string", "System Serial Number", "N/A", "  none ", "000"):
        assert usable_serial(junk) is None, junk
    assert usable_serial(" SN-42 ") == "SN-42"


def test_fallback_name_is_stable_dns_safe_and_different() -> None:
    base = "a" * 63
    first = fallback_name(base, "uuid-1")
    assert first == fallback_name(base, "uuid-1")
    assert first != fallback_name(base, "uuid-2")
    assert first != base and DNS_LABEL.match(first) and len(first) <= 63
    assert dns_label("Ünïcode_Serial!") == "n-code-serial"


def test_labels_from_hardware() -> None:
    hardware = {
        "cpu": {"arch": "x86_64", "count": 16},
        "ramMebibytes": 24576 + 400,
        "systemVendor": {"manufacturer": "Dell Inc.", "productName": "PowerEdge R640 (SKU=1)"},
    }
    assert hardware_labels(hardware) == {
        "hardware.metal3.io/arch": "x86_64",
        "hardware.metal3.io/cpu-count": "16",
        "hardware.metal3.io/memory-gib": "24",
        "hardware.metal3.io/vendor": "Dell-Inc",
        "hardware.metal3.io/product": "PowerEdge-R640-SKU-1",
    }
    assert DISCOVERED_LABEL.startswith("discovery.metal3.io/")


def test_missing_fields_give_no_label_and_values_stay_valid() -> None:
    assert hardware_labels({"cpu": {}, "systemVendor": {"manufacturer": "!!!"}}) == {}
    for text in ("a" * 80 + ".", "-x-", "Vendor, Inc. / Ltd", "  ", "é"):
        value = label_value(text)
        assert LABEL_VALUE.match(value) and len(value) <= 63, (text, value)


def test_bmc_address_and_boot_mac() -> None:
    assert bmc_url({"bmc_address": "192.0.2.5"}) == "ipmi://192.0.2.5"
    assert bmc_url({"bmc_address": "0.0.0.0", "bmc_v6address": "::/0"}) is None
    assert bmc_url({"bmc_address": "0.0.0.0", "bmc_v6address": "2001:db8::5"}) == (
        "ipmi://[2001:db8::5]"
    )
    assert bmc_url({"bmc_address": "not an address; rm -rf"}) is None
    assert bmc_url({}) is None
    nics = [{"mac": "52:54:00:00:00:01"}, {"mac": "52:54:00:00:00:02", "pxe": True}]
    assert boot_mac({"nics": nics}) == "52:54:00:00:00:02"
    assert boot_mac({"nics": nics[:1]}) == "52:54:00:00:00:01"
    assert boot_mac({"nics": []}) is None
