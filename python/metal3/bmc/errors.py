"""The small set of BMC errors the operator acts on.

Drivers translate every library exception into one of these, so callers never need to know
whether a host speaks Redfish or IPMI. Messages name the BMC by its redacted address and never
carry a secret: `redact` scrubs known secrets out of any text taken from a library exception.
"""

from __future__ import annotations

from collections.abc import Iterable


class BMCError(Exception):
    """Base class: something went wrong talking to (or about) a BMC."""

    #: short machine-friendly kind, used by the CLI and in status messages
    kind = "error"

    def __init__(self, address: str, message: str) -> None:
        super().__init__(f"{address}: {message}")
        self.address = address
        self.message = message


class BMCAddressError(BMCError, ValueError):
    """The BMC address cannot be parsed or names an unknown scheme."""

    kind = "invalid-address"


class BMCUnknownTypeError(BMCAddressError):
    """The address names a scheme (BMC type) no driver handles."""

    def __init__(self, address: str, bmc_type: str, message: str) -> None:
        super().__init__(address, message)
        self.bmc_type = bmc_type


class BMCCredentialsError(BMCError, ValueError):
    """The credentials Secret is missing a key, has an empty value or is not decodable."""

    kind = "invalid-credentials"


class BMCAuthError(BMCError):
    """The BMC rejected the user name or password."""

    kind = "bad-credentials"


class BMCUnreachableError(BMCError):
    """Nothing answered, the connection broke, or the BMC did not reply in time."""

    kind = "unreachable"


class BMCTimeoutError(BMCUnreachableError):
    """The BMC did not answer (or reach the requested state) before the deadline."""

    kind = "timeout"


class BMCCertificateError(BMCUnreachableError):
    """TLS verification of the BMC's certificate failed."""

    kind = "tls-verification-failed"


class BMCUnsupportedError(BMCError):
    """The BMC (or the driver for its scheme) does not offer this operation."""

    kind = "unsupported"


class BMCRefusedError(BMCError):
    """The BMC understood the request and refused or failed it."""

    kind = "refused"


class BMCServerError(BMCError):
    """The BMC failed the request on its own side (an HTTP 5xx other than 501, a busy IPMI
    BMC): nothing says the request was wrong, and the same request may well work a moment
    later (sushy-tools answers 500 while its state database is locked by another request)."""

    kind = "bmc-error"


REDACTED = "***"


def redact(text: str, secrets: Iterable[str | bytes]) -> str:
    """Return `text` with every non-empty secret (and its bytes repr) replaced by ***."""
    for secret in secrets:
        if not secret:
            continue
        value = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret
        text = text.replace(value, REDACTED)
        text = text.replace(repr(value.encode("utf-8", "replace")), REDACTED)
    return text
