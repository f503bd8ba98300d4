"""BMC address parsing: every Metal3 scheme, IPv6, ports, system paths and clear errors."""

from __future__ import annotations

import pytest

from metal3.bmc.address import SCHEMES, BootMethod, Driver, parse_address
from metal3.bmc.errors import BMCAddressError

SYSTEM = "/redfish/v1/Systems/1"


@pytest.mark.parametrize(
    ("address", "host", "port", "privilege"),
    [
        ("192.168.122.1", "192.168.122.1", None, "ADMINISTRATOR"),
        ("192.168.122.1:6230", "192.168.122.1", 6230, "ADMINISTRATOR"),
        ("bmc-1.example.com", "bmc-1.example.com", None, "ADMINISTRATOR"),
        ("bmc-1.example.com:623", "bmc-1.example.com", 623, "ADMINISTRATOR"),
        ("ipmi://192.168.122.1", "192.168.122.1", None, "ADMINISTRATOR"),
        ("ipmi://192.168.122.1:6233", "192.168.122.1", 6233, "ADMINISTRATOR"),
        ("ipmi://[fe80::fc33:62ff:fe83:8a76]:6233", "fe80::fc33:62ff:fe83:8a76", 6233, None),
        ("ipmi://[fd00::1]", "fd00::1", None, None),
        ("[fd00::1]:6230", "fd00::1", 6230, None),
        ("fd00::1", "fd00::1", None, None),
        ("ipmi://host?privilegelevel=OPERATOR", "host", None, "OPERATOR"),
        ("ipmi://host:1623?privilegelevel=user", "host", 1623, "USER"),
        ("IPMI://Host.Example", "host.example", None, "ADMINISTRATOR"),
    ],
)
def test_ipmi_forms(address: str, host: str, port: int | None, privilege: str | None) -> None:
    parsed = parse_address(address)
    assert parsed.driver is Driver.IPMI
    assert parsed.scheme == "ipmi"
    assert parsed.host == host
    assert parsed.port == port
    assert parsed.ipmi_port == (port or 623)
    assert parsed.privilege_level == (privilege or "ADMINISTRATOR")
    assert parsed.transport is None
    assert parsed.info.boot_method is BootMethod.PXE
    assert not parsed.info.needs_mac


def test_libvirt_is_ipmi_and_needs_a_mac() -> None:
    parsed = parse_address("libvirt://192.168.122.1:6233/")
    assert parsed.driver is Driver.IPMI
    assert parsed.scheme == "libvirt"
    assert parsed.port == 6233
    assert parsed.info.needs_mac


REDFISH_FAMILIES = [
    ("redfish", BootMethod.PXE, "generic"),
    ("redfish-virtualmedia", BootMethod.VIRTUAL_MEDIA, "generic"),
    ("redfish-uefihttp", BootMethod.UEFI_HTTP, "generic"),
    ("idrac-redfish", BootMethod.PXE, "dell"),
    ("idrac-virtualmedia", BootMethod.VIRTUAL_MEDIA, "dell"),
    ("ilo5-redfish", BootMethod.PXE, "hpe"),
    ("ilo5-virtualmedia", BootMethod.VIRTUAL_MEDIA, "hpe"),
]


@pytest.mark.parametrize(("family", "boot", "vendor"), REDFISH_FAMILIES)
@pytest.mark.parametrize(
    ("suffix", "transport"), [("", "https"), ("+http", "http"), ("+https", "https")]
)
def test_redfish_schemes(
    family: str, boot: BootMethod, vendor: str, suffix: str, transport: str
) -> None:
    parsed = parse_address(f"{family}{suffix}://10.1.2.3:8000{SYSTEM}")
    assert parsed.driver is Driver.REDFISH
    assert parsed.scheme == family + suffix
    assert parsed.transport == transport
    assert parsed.endpoint == f"{transport}://10.1.2.3:8000"
    assert parsed.system_id == SYSTEM
    assert parsed.info.boot_method is boot
    assert parsed.info.vendor == vendor
    assert parsed.info.raid and parsed.info.firmware and parsed.info.secure_boot
    assert parsed.info.oob_inspection
    assert parsed.info.iso_preprovisioning is (boot is not BootMethod.PXE)
    assert parsed.info.needs_provisioning_network is (boot is BootMethod.PXE)


def test_every_scheme_is_listed_with_capabilities() -> None:
    expected = {"ipmi", "libvirt"}
    for family, _, _ in REDFISH_FAMILIES:
        expected |= {family, f"{family}+http", f"{family}+https"}
    assert set(SCHEMES) == expected
    assert not SCHEMES["ipmi"].secure_boot
    assert not SCHEMES["ipmi"].raid
    assert not SCHEMES["ipmi"].oob_inspection


@pytest.mark.parametrize(
    ("address", "system_id"),
    [
        ("redfish://bmc", None),
        ("redfish://bmc/", None),
        ("redfish://bmc/redfish/v1", None),
        ("redfish://bmc/redfish/v1/", None),
        ("redfish://bmc/redfish/v1/Systems/abc-123", "/redfish/v1/Systems/abc-123"),
        (
            "redfish://bmc/redfish/v1/Systems/System.Embedded.1/",
            "/redfish/v1/Systems/System.Embedded.1",
        ),
    ],
)
def test_redfish_system_path(address: str, system_id: str | None) -> None:
    assert parse_address(address).system_id == system_id


def test_redfish_ipv6_endpoint() -> None:
    parsed = parse_address("redfish+https://[2001:db8::5]:8443/redfish/v1/Systems/1")
    assert parsed.host == "2001:db8::5"
    assert parsed.endpoint == "https://[2001:db8::5]:8443"
    no_port = parse_address("redfish-virtualmedia://[2001:db8::5]/redfish/v1/Systems/1")
    assert no_port.endpoint == "https://[2001:db8::5]"


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("", "missing BMC address"),
        ("   ", "missing BMC address"),
        ("foo://bmc", "unknown BMC type 'foo'"),
        ("redfish+ftp://bmc", "unknown BMC type 'redfish+ftp'"),
        ("ipmi+https://bmc", "unknown BMC type 'ipmi+https'"),
        ("ipmi://", "has no host"),
        ("redfish:///redfish/v1/Systems/1", "has no host"),
        ("ipmi://bad_host!", "not a valid host name"),
        ("ipmi://host:99999", "out of range"),
        ("ipmi://host:port", "malformed host or port"),
        ("ipmi://[not-v6]:623", "malformed host or port"),
        ("fe80::1:623:zz", "IPv6 addresses with a port must be written in brackets"),
        ("ipmi://host?privilegelevel=GOD", "unknown privilegelevel"),
        ("1abc://host", "malformed scheme"),
    ],
)
def test_bad_addresses_name_the_address(address: str, fragment: str) -> None:
    with pytest.raises(BMCAddressError) as info:
        parse_address(address)
    assert fragment in str(info.value)
    if address.strip():
        assert address in str(info.value)


def test_credentials_in_address_are_refused_without_echoing_them() -> None:
    with pytest.raises(BMCAddressError) as info:
        parse_address("redfish://admin:hunter2@bmc.example/redfish/v1/Systems/1")
    message = str(info.value)
    assert "hunter2" not in message
    assert "bmc.example" in message
    assert "use a Secret" in message
