"""What a host's `status.errorMessage` says when registering it fails, in upstream's words.

Upstream Metal3 registers a host by having Ironic verify the BMC: check the power interface's
settings, then read the power state. A failure lands in `status.errorMessage` as Ironic's
`Failed to get power state for node <node>. Error: <driver error>` (or `Failed to validate power
driver interface ...`), where the Redfish driver reports connection problems as `Redfish
connection failed for node <node>: Unable to connect to <url>. Error: ...` and other Redfish
errors as `Redfish exception occurred. Error: ...`, and the IPMI driver as `IPMI call failed:
power status.`. Before that, the operator itself refuses addresses (`Unknown BMC type '<type>'
for address <address>`, `failed to parse BMC address information: ...`), credentials
(`Validation error with BMC credentials: ...`), and drivers that cannot serve the host (`BMC
driver <type> requires a BootMACAddress value`, `... does not support secure boot`).

The messages here keep that structure, so people and tools used to upstream's recognise them;
where upstream puts a library's exception text, they put our driver's message, which says what
went wrong (refused connection, rejected credentials, certificate) and never holds a secret.
Upstream's IPMI message names no cause; ours adds it.
"""

from __future__ import annotations

from metal3.bmc.address import BMCAddress, Driver
from metal3.bmc.errors import (
    BMCAddressError,
    BMCCredentialsError,
    BMCError,
    BMCRefusedError,
    BMCServerError,
    BMCUnknownTypeError,
    BMCUnreachableError,
    BMCUnsupportedError,
)

#: `spec.bootMode` value that needs a driver with secure boot
UEFI_SECURE_BOOT = "UEFISecureBoot"  # the API's BootMode.UEFI_SECURE_BOOT (not imported: heavy)


def registration_error_message(
    error: BMCError, *, node: str, address: BMCAddress | None = None
) -> str:
    """The registration error message for a BMC error.

    ``node`` names the host as the provisioner knows it (upstream: the Ironic node's UUID);
    ``address`` is the parsed BMC address the failing call went to (None when parsing failed).
    """
    if isinstance(error, BMCUnknownTypeError):
        return f"Unknown BMC type '{error.bmc_type}' for address {error.address}"
    if isinstance(error, BMCAddressError):
        return f"failed to parse BMC address information: {error.message}"
    if isinstance(error, BMCCredentialsError):
        return f"Validation error with BMC credentials: {error}"
    if isinstance(error, BMCUnsupportedError):
        return f"Failed to validate power driver interface for node {node}. Error: {error.message}"
    detail = _driver_error(error, node, address)
    return f"Failed to get power state for node {node}. Error: {detail}"


def _driver_error(error: BMCError, node: str, address: BMCAddress | None) -> str:
    if address is None:
        return error.message
    if address.driver is Driver.IPMI:
        return f"IPMI call failed: power status. Cause: {error.message}"
    if isinstance(error, BMCUnreachableError):  # also timeouts and certificate failures
        return (
            f"Redfish connection failed for node {node}: Unable to connect to "
            f"{address.endpoint}. Error: {error.message}"
        )
    if isinstance(error, BMCRefusedError | BMCServerError):
        return f"Redfish exception occurred. Error: {error.message}"
    return error.message  # e.g. rejected credentials: the BMC's HTTP status is in the message


def registration_precheck(
    address: BMCAddress, *, boot_mac_address: str | None, boot_mode: str | None
) -> str | None:
    """Upstream's refusal of a driver that cannot serve the host as specified, or None."""
    if address.info.needs_mac and not boot_mac_address:
        return f"BMC driver {address.info.name} requires a BootMACAddress value"
    if boot_mode == UEFI_SECURE_BOOT and not address.info.secure_boot:
        return f"BMC driver {address.info.name} does not support secure boot"
    return None
