"""Parse the BMC addresses Metal3 users write in a BareMetalHost's `spec.bmc.address`.

Every scheme the upstream operator accepts is here, each with what it implies: which driver
talks to the BMC, how the host boots the agent, whether a `bootMACAddress` is needed up front,
and which optional features (RAID, firmware, secure boot, out-of-band inspection) it offers.
Schemeless `host` and `host:port` addresses mean IPMI, as upstream.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from urllib.parse import parse_qs, urlsplit

from metal3.bmc.errors import BMCAddressError, BMCUnknownTypeError


class Driver(StrEnum):
    """The protocol driver that talks to the BMC."""

    IPMI = "ipmi"
    REDFISH = "redfish"


class BootMethod(StrEnum):
    """How the host boots the provisioning agent."""

    PXE = "pxe"
    VIRTUAL_MEDIA = "virtual-media"
    UEFI_HTTP = "uefi-http"


@dataclass(frozen=True, kw_only=True)
class SchemeInfo:
    """What an address scheme means for provisioning."""

    name: str
    driver: Driver
    vendor: str
    boot_method: BootMethod
    needs_mac: bool
    raid: bool
    firmware: bool
    secure_boot: bool
    oob_inspection: bool

    @property
    def iso_preprovisioning(self) -> bool:
        """Whether a preprovisioning image in ISO format can be booted (not over PXE)."""
        return self.boot_method is not BootMethod.PXE

    @property
    def needs_provisioning_network(self) -> bool:
        """PXE needs DHCP/TFTP on a provisioning network; virtual media and HTTP boot do not."""
        return self.boot_method is BootMethod.PXE


def _ipmi(name: str, *, needs_mac: bool) -> SchemeInfo:
    return SchemeInfo(
        name=name,
        driver=Driver.IPMI,
        vendor="generic",
        boot_method=BootMethod.PXE,
        needs_mac=needs_mac,
        raid=False,
        firmware=False,
        secure_boot=False,
        oob_inspection=False,
    )


def _redfish(name: str, vendor: str, boot: BootMethod) -> SchemeInfo:
    return SchemeInfo(
        name=name,
        driver=Driver.REDFISH,
        vendor=vendor,
        boot_method=boot,
        # Redfish inspection reports MACs, so none is needed up front (as upstream today).
        needs_mac=False,
        raid=True,
        firmware=True,
        secure_boot=True,
        oob_inspection=True,
    )


_BASE_SCHEMES: tuple[SchemeInfo, ...] = (
    _ipmi("ipmi", needs_mac=False),
    # libvirt hosts are virtual machines behind an IPMI bridge; they need the MAC up front.
    _ipmi("libvirt", needs_mac=True),
    _redfish("redfish", "generic", BootMethod.PXE),
    _redfish("redfish-virtualmedia", "generic", BootMethod.VIRTUAL_MEDIA),
    _redfish("redfish-uefihttp", "generic", BootMethod.UEFI_HTTP),
    _redfish("idrac-redfish", "dell", BootMethod.PXE),
    _redfish("idrac-virtualmedia", "dell", BootMethod.VIRTUAL_MEDIA),
    _redfish("ilo5-redfish", "hpe", BootMethod.PXE),
    _redfish("ilo5-virtualmedia", "hpe", BootMethod.VIRTUAL_MEDIA),
)

#: Redfish schemes also exist with a `+http` / `+https` transport suffix.
TRANSPORTS = ("http", "https")
DEFAULT_TRANSPORT = "https"
IPMI_DEFAULT_PORT = 623
PRIVILEGE_LEVELS = ("CALLBACK", "USER", "OPERATOR", "ADMINISTRATOR", "OEM")
DEFAULT_PRIVILEGE_LEVEL = "ADMINISTRATOR"


def _scheme_table() -> dict[str, SchemeInfo]:
    table: dict[str, SchemeInfo] = {}
    for info in _BASE_SCHEMES:
        table[info.name] = info
        if info.driver is Driver.REDFISH:
            for transport in TRANSPORTS:
                table[f"{info.name}+{transport}"] = info
    return table


#: every accepted scheme (including transport suffixes) and what it means
SCHEMES: MappingProxyType[str, SchemeInfo] = MappingProxyType(_scheme_table())

_DNS_NAME = re.compile(
    r"^(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])\.)*"
    r"([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9\-]{0,61}[A-Za-z0-9])$"
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")


@dataclass(frozen=True, kw_only=True)
class BMCAddress:
    """A parsed BMC address."""

    address: str
    scheme: str
    info: SchemeInfo
    host: str
    port: int | None
    #: `http` or `https` for Redfish schemes, None for IPMI
    transport: str | None
    #: Redfish system path (`/redfish/v1/Systems/<id>`); None means "the only system"
    system_id: str | None
    #: IPMI privilege level (upper case); None for Redfish
    privilege_level: str | None

    @property
    def driver(self) -> Driver:
        return self.info.driver

    @property
    def host_for_url(self) -> str:
        """The host as it appears in a URL: IPv6 literals in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def endpoint(self) -> str:
        """`scheme://host[:port]` of a Redfish service."""
        if self.transport is None:
            raise BMCAddressError(self.address, "an IPMI address has no HTTP endpoint")
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.transport}://{self.host_for_url}{port}"

    @property
    def ipmi_port(self) -> int:
        return self.port if self.port is not None else IPMI_DEFAULT_PORT

    def __str__(self) -> str:
        return self.address


def _fail(address: str, why: str) -> BMCAddressError:
    return BMCAddressError(address or "<empty>", why)


def _check_host(address: str, host: str) -> str:
    """Return the canonical host (IP literal or DNS name) or raise naming the address."""
    if not host:
        raise _fail(address, "the address has no host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _DNS_NAME.match(host) is None:
        raise _fail(address, f"{host!r} is not a valid host name or IP address")
    return host


def _split_schemeless(address: str) -> str:
    """Turn `host`, `host:port`, `[v6]:port` or a bare IPv6 literal into an ipmi:// URL."""
    if address.count(":") > 1 and not address.startswith("["):
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise _fail(
                address, "IPv6 addresses with a port must be written in brackets: [addr]:port"
            ) from None
        return f"ipmi://[{address}]"
    return f"ipmi://{address}"


def parse_address(address: str) -> BMCAddress:
    """Parse one `spec.bmc.address`; raise BMCAddressError naming the address on bad input."""
    text = address.strip()
    if not text:
        raise _fail(address, "missing BMC address")
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if not _SCHEME.match(scheme):
            raise _fail(address, f"malformed scheme {scheme!r}")
        url_text = text
    else:
        url_text = _split_schemeless(text)
        scheme = "ipmi"
    scheme = scheme.lower()
    info = SCHEMES.get(scheme)
    if info is None:
        known = ", ".join(sorted(SCHEMES))
        raise BMCUnknownTypeError(address, scheme, f"unknown BMC type {scheme!r} (known: {known})")
    if "@" in url_text.split("://", 1)[1].split("/", 1)[0]:
        # Never echo what could be a password: credentials belong in the Secret.
        raise _fail(
            _redact_userinfo(address), "credentials in the address are not allowed; use a Secret"
        )
    try:
        parts = urlsplit(url_text)
        port = parts.port
    except ValueError as exc:
        raise _fail(address, f"malformed host or port ({exc})") from None
    if port is not None and not 0 < port < 65536:
        raise _fail(address, f"port {port} is out of range")
    raw_host = parts.hostname or ""
    if parts.netloc.startswith("[") and not _is_ipv6(raw_host):
        raise _fail(address, f"{raw_host!r} in brackets is not an IPv6 address")
    host = _check_host(address, raw_host)

    if info.driver is Driver.IPMI:
        return BMCAddress(
            address=address,
            scheme=scheme,
            info=info,
            host=host,
            port=port,
            transport=None,
            system_id=None,
            privilege_level=_privilege_level(address, parts.query),
        )
    transport = scheme.split("+", 1)[1] if "+" in scheme else DEFAULT_TRANSPORT
    path = parts.path
    trimmed = path.strip("/")
    system_id = None if trimmed in ("", "redfish/v1") else "/" + trimmed
    return BMCAddress(
        address=address,
        scheme=scheme,
        info=info,
        host=host,
        port=port,
        transport=transport,
        system_id=system_id,
        privilege_level=None,
    )


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _privilege_level(address: str, query: str) -> str:
    values = parse_qs(query).get("privilegelevel")
    if not values:
        return DEFAULT_PRIVILEGE_LEVEL
    level = values[0].strip().upper()
    if level not in PRIVILEGE_LEVELS:
        allowed = ", ".join(PRIVILEGE_LEVELS)
        raise _fail(address, f"unknown privilegelevel {values[0]!r} (allowed: {allowed})")
    return level


def _redact_userinfo(address: str) -> str:
    scheme, sep, rest = address.partition("://")
    if not sep:
        return "<address with credentials>"
    netloc_end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if index != -1:
            netloc_end = min(netloc_end, index)
    netloc = rest[:netloc_end]
    host = netloc.rsplit("@", 1)[1]
    return f"{scheme}://***@{host}{rest[netloc_end:]}"
