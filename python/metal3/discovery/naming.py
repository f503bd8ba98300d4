"""The name of a discovered host: its system serial number, or its boot MAC, as a DNS label.

Serials that firmware vendors leave as placeholders ("To Be Filled By O.E.M.", "Default
string", "0"...) name nothing and are treated as absent, so two machines with the same
placeholder never share a name or count as one system.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 63  # a DNS-1123 label: also usable as a host name
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_DASHES = re.compile(r"-{2,}")
PLACEHOLDER_SERIALS = frozenset(
    {
        "",
        "0",
        "none",
        "null",
        "n/a",
        "na",
        "unknown",
        "not specified",
        "not available",
        "not applicable",
        "default string",
        "system serial number",
        "to be filled by o.e.m.",
        "chassis serial number",
        "0123456789",
        "123456789",
    }
)


def usable_serial(serial: str | None) -> str | None:
    """The serial with surrounding blanks removed, or None for a placeholder or a serial of
    only zeros."""
    if serial is None:
        return None
    text = serial.strip()
    if text.lower() in PLACEHOLDER_SERIALS or not text.strip("0"):
        return None
    return text


def dns_label(text: str) -> str:
    """``text`` as a DNS-1123 label (lower case, runs of anything else as one ``-``, at most
    63 characters, starting and ending alphanumeric); "" when nothing is left."""
    label = _DASHES.sub("-", _NOT_LABEL.sub("-", text.lower())).strip("-")
    return label[:MAX_NAME].rstrip("-")


def host_name(serial: str | None, boot_mac: str) -> str:
    """The serial as a label when it is usable and gives one, else the MAC with ``-``."""
    usable = usable_serial(serial)
    name = dns_label(usable) if usable else ""
    return name or dns_label(boot_mac.replace(":", "-"))


def fallback_name(name: str, identity: str) -> str:
    """The name to use when ``name`` belongs to another host: a suffix from the system's
    identity, so the same system always gets the same second name."""
    suffix = hashlib.sha256(identity.encode()).hexdigest()[:6]
    return f"{name[: MAX_NAME - 7].rstrip('-')}-{suffix}"
