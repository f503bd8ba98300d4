"""Registration errors worded as upstream Metal3 reports them in `status.errorMessage`.

Each failure is real: the session's Redfish emulator and IPMI simulator with a wrong password,
a port nobody listens on, a server that accepts and never answers, a certificate from an unknown
CA. The expected wording is upstream's (Ironic's verify step and drivers, the operator's address
and credentials checks), with our driver's message where upstream has a library's text.
"""

from __future__ import annotations

import anyio
import pytest

from metal3.bmc import (
    BMCError,
    Credentials,
    credentials_from_secret,
    parse_address,
    registration_error_message,
    registration_precheck,
)
from metal3.bmc.emulators import (
    IPMISimulator,
    SushyEmulator,
    free_port,
    silent_tcp_server,
    silent_udp_port,
)
from metal3.bmc.ipmi import IPMIBMC
from metal3.bmc.redfish import RedfishBMC

pytestmark = pytest.mark.anyio

WRONG = "Wrong-pw-0451"
NODE = "ns~host-0"
POWER_STATE_FAILED = f"Failed to get power state for node {NODE}. Error: "


async def redfish_failure(address: str, password: str, **kwargs: float) -> str:
    parsed = parse_address(address)
    async with RedfishBMC(parsed, Credentials("admin", password), **kwargs) as bmc:
        with pytest.raises(BMCError) as info:
            with anyio.fail_after(30):
                await bmc.validate()
    return registration_error_message(info.value, node=NODE, address=parsed)


async def test_redfish_wrong_password(redfish: SushyEmulator) -> None:
    message = await redfish_failure(redfish.address(redfish.systems[0]), WRONG)
    assert message == POWER_STATE_FAILED + "the BMC rejected the credentials (HTTP 401)"


async def test_redfish_nothing_listening() -> None:
    port = free_port()
    message = await redfish_failure(f"redfish+http://127.0.0.1:{port}/redfish/v1/Systems/1", WRONG)
    assert message == (
        POWER_STATE_FAILED + f"Redfish connection failed for node {NODE}: Unable to connect to "
        f"http://127.0.0.1:{port}. Error: cannot reach the BMC: connection refused "
        "(nothing listening?)"
    )


async def test_redfish_server_that_never_answers() -> None:
    with silent_tcp_server() as port:
        message = await redfish_failure(
            f"redfish+http://127.0.0.1:{port}/redfish/v1/Systems/1", WRONG, read_timeout=0.5
        )
    assert message == (
        POWER_STATE_FAILED + f"Redfish connection failed for node {NODE}: Unable to connect to "
        f"http://127.0.0.1:{port}. Error: the BMC did not answer in time"
    )


async def test_redfish_certificate_from_an_unknown_ca(redfish_tls: SushyEmulator) -> None:
    message = await redfish_failure(redfish_tls.address(redfish_tls.systems[0]), WRONG)
    assert message == (
        POWER_STATE_FAILED + f"Redfish connection failed for node {NODE}: Unable to connect to "
        f"https://127.0.0.1:{redfish_tls.port}. Error: TLS certificate verification failed "
        "(use a trusted CA or set disableCertificateVerification)"
    )


async def test_redfish_unknown_system(redfish: SushyEmulator) -> None:
    message = await redfish_failure(
        f"redfish+http://127.0.0.1:{redfish.port}/redfish/v1/Systems/nope", "Redfish-pw-42"
    )
    assert message.startswith(
        POWER_STATE_FAILED + "Redfish exception occurred. Error: not found on the BMC: "
    ), message
    assert "/redfish/v1/Systems/nope" in message


async def ipmi_failure(address: str, password: str, call_timeout: float) -> str:
    parsed = parse_address(address)
    bmc = IPMIBMC(parsed, Credentials("root", password), call_timeout=call_timeout)
    with pytest.raises(BMCError) as info:
        await bmc.validate()
    return registration_error_message(info.value, node=NODE, address=parsed)


async def test_ipmi_wrong_password(ipmi_sim: IPMISimulator) -> None:
    message = await ipmi_failure(ipmi_sim.address(), WRONG, call_timeout=10)
    prefix = POWER_STATE_FAILED + "IPMI call failed: power status. Cause: "
    assert message.startswith(prefix + "the BMC rejected the credentials ("), message
    assert "Incorrect password" in message and WRONG not in message


async def test_ipmi_bmc_that_never_answers() -> None:
    with silent_udp_port() as port:
        message = await ipmi_failure(f"ipmi://127.0.0.1:{port}", WRONG, call_timeout=2)
    assert message == (
        POWER_STATE_FAILED + "IPMI call failed: power status. Cause: no answer from the BMC "
        "within 2s"
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        # upstream's own test expects exactly this for an empty address
        ("", "failed to parse BMC address information: missing BMC address"),
        ("foo://192.0.2.1", "Unknown BMC type 'foo' for address foo://192.0.2.1"),
        (
            "redfish://admin:Sec-ret-7@192.0.2.1/redfish/v1/Systems/1",
            "failed to parse BMC address information: credentials in the address are not "
            "allowed; use a Secret",
        ),
    ],
)
def test_address_errors(address: str, expected: str) -> None:
    with pytest.raises(BMCError) as info:
        parse_address(address)
    assert registration_error_message(info.value, node=NODE) == expected


def test_credentials_errors() -> None:
    secret = {"metadata": {"name": "h-bmc", "namespace": "ns"}, "stringData": {"username": "u"}}
    with pytest.raises(BMCError) as info:
        credentials_from_secret(secret)
    assert registration_error_message(info.value, node=NODE) == (
        "Validation error with BMC credentials: Secret ns/h-bmc: missing key(s): password"
    )


@pytest.mark.parametrize(
    ("address", "mac", "boot_mode", "expected"),
    [
        ("libvirt://192.0.2.1", None, None, "BMC driver libvirt requires a BootMACAddress value"),
        ("libvirt://192.0.2.1", "52:54:00:00:00:01", None, None),
        (
            "ipmi://192.0.2.1",
            None,
            "UEFISecureBoot",
            "BMC driver ipmi does not support secure boot",
        ),
        ("redfish+https://192.0.2.1/redfish/v1/Systems/1", None, "UEFISecureBoot", None),
        ("ipmi://192.0.2.1", None, "UEFI", None),
    ],
)
def test_precheck(
    address: str, mac: str | None, boot_mode: str | None, expected: str | None
) -> None:
    parsed = parse_address(address)
    assert registration_precheck(parsed, boot_mac_address=mac, boot_mode=boot_mode) == expected
