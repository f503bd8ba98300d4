"""Talk to a host's BMC directly: address parsing, credentials, and the Redfish/IPMI drivers.

`connect(address, credentials)` picks the driver the address scheme names and returns a `BMC`
(see `metal3.bmc.interface`). Drivers import their protocol library only when used.
`registration_error_message` words a BMC error as upstream reports a failed registration.
"""

from __future__ import annotations

import anyio

from metal3.bmc.address import BMCAddress, Driver, parse_address
from metal3.bmc.credentials import Credentials, credentials_from_secret
from metal3.bmc.errors import (
    BMCAddressError,
    BMCAuthError,
    BMCCertificateError,
    BMCCredentialsError,
    BMCError,
    BMCRefusedError,
    BMCTimeoutError,
    BMCUnknownTypeError,
    BMCUnreachableError,
    BMCUnsupportedError,
)
from metal3.bmc.interface import BMC, BootDevice, BootSettings, Inventory, PowerAction, PowerState
from metal3.bmc.registration import registration_error_message, registration_precheck

__all__ = [
    "BMC",
    "BMCAddress",
    "BMCAddressError",
    "BMCAuthError",
    "BMCCertificateError",
    "BMCCredentialsError",
    "BMCError",
    "BMCRefusedError",
    "BMCTimeoutError",
    "BMCUnknownTypeError",
    "BMCUnreachableError",
    "BMCUnsupportedError",
    "BootDevice",
    "BootSettings",
    "Credentials",
    "Driver",
    "Inventory",
    "PowerAction",
    "PowerState",
    "connect",
    "credentials_from_secret",
    "parse_address",
    "registration_error_message",
    "registration_precheck",
]


def connect(
    address: str | BMCAddress,
    credentials: Credentials,
    *,
    disable_certificate_verification: bool = False,
    ca_file: str | None = None,
    limiter: anyio.CapacityLimiter | None = None,
) -> BMC:
    """A driver object for the address (nothing is sent until the first call)."""
    parsed = parse_address(address) if isinstance(address, str) else address
    if parsed.driver is Driver.REDFISH:
        from metal3.bmc.redfish import RedfishBMC

        verify: bool | str = ca_file or True
        if disable_certificate_verification:
            verify = False
        return RedfishBMC(parsed, credentials, verify=verify, limiter=limiter)
    from metal3.bmc.ipmi import IPMIBMC

    return IPMIBMC(parsed, credentials, limiter=limiter)
