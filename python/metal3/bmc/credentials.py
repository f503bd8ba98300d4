"""BMC credentials from a Kubernetes Secret (`username` and `password` keys).

The Secret is given as the parsed object (a dict as read from YAML or the API): values come from
`data` (base64) or `stringData` (plain text, which wins, as in Kubernetes). Both keys must be
non-empty after trimming; the values themselves are kept exactly as stored. Passwords never
appear in a repr, an error or a log line.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from metal3.bmc.errors import BMCCredentialsError

REQUIRED_KEYS = ("username", "password")


@dataclass(frozen=True)
class Credentials:
    """User name and password for a BMC; the password is hidden from repr()."""

    username: str
    password: str = field(repr=False)

    def warnings(self) -> list[str]:
        """Likely mistakes worth telling a user who is debugging a login failure."""
        found = []
        for key, value in (("username", self.username), ("password", self.password)):
            if value != value.strip():
                found.append(f"the {key} has leading or trailing whitespace (a newline?)")
        return found


def _secret_name(secret: Mapping[str, Any]) -> str:
    meta = secret.get("metadata")
    if isinstance(meta, Mapping):
        name = meta.get("name")
        namespace = meta.get("namespace")
        if name:
            return f"Secret {namespace}/{name}" if namespace else f"Secret {name}"
    return "Secret"


def credentials_from_secret(secret: Mapping[str, Any]) -> Credentials:
    """Read `username`/`password` from a Secret object; raise BMCCredentialsError if unusable."""
    label = _secret_name(secret)
    values: dict[str, str] = {}
    data = secret.get("data") or {}
    string_data = secret.get("stringData") or {}
    if not isinstance(data, Mapping) or not isinstance(string_data, Mapping):
        raise BMCCredentialsError(label, "data and stringData must be mappings")
    for key in REQUIRED_KEYS:
        if key in string_data:
            raw = string_data[key]
            if not isinstance(raw, str):
                raise BMCCredentialsError(label, f"stringData.{key} is not a string")
            values[key] = raw
        elif key in data:
            values[key] = _decode(label, key, data[key])
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise BMCCredentialsError(label, f"missing key(s): {', '.join(missing)}")
    empty = [key for key in REQUIRED_KEYS if not values[key].strip()]
    if empty:
        raise BMCCredentialsError(label, f"empty value for key(s): {', '.join(empty)}")
    return Credentials(values["username"], values["password"])


def _decode(label: str, key: str, raw: object) -> str:
    if not isinstance(raw, str):
        raise BMCCredentialsError(label, f"data.{key} is not a base64 string")
    try:
        return base64.b64decode(raw.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        # The value itself is secret: name the key only.
        raise BMCCredentialsError(label, f"data.{key} is not valid base64 of UTF-8 text") from None
