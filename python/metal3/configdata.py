"""A host's configuration data (userData, networkData, metaData): which Secrets hold it and how
each is read, in one place for everyone who reads it (the reconciler, before it provisions; the
agent API, for the config drive), so the two can never disagree.

Upstream's rules: a Secret must be in the host's namespace; its value is under the field's own
key, else under ``value``; userData and metaData must have one, networkData may be absent;
networkData without a reference of its own comes from ``preprovisioningNetworkDataName``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]

# How a configuration data error's message starts (upstream's wording): a host whose recorded
# provisioning error starts so waits for its data in provisioning, other provisioning errors send
# it back through deprovisioning.
CONFIG_DATA_ERROR_PREFIX = "could not retrieve "


class ConfigDataError(Exception):
    """userData, networkData or metaData cannot be read (Secret missing, without the key, or in
    another namespace). The message names the Secret, never its content."""

    def __init__(self, field: str, secret: str, reason: str) -> None:
        super().__init__(f'{CONFIG_DATA_ERROR_PREFIX}{field} secret "{secret}": {reason}')


@dataclass(frozen=True)
class ConfigDataRef:
    field: str  # userData, networkData or metaData
    name: str
    namespace: str | None
    key_required: bool

    def secret_name(self, host_namespace: str) -> str:
        """The Secret to read, in ``host_namespace``; refuses another namespace or no name."""
        if self.namespace and self.namespace != host_namespace:
            raise ConfigDataError(
                self.field,
                f"{self.namespace}/{self.name}",
                "cross-namespace Secret references are not allowed",
            )
        if not self.name:
            raise ConfigDataError(self.field, "", "the reference names no Secret")
        return self.name


def references(spec: Mapping[str, Any]) -> list[ConfigDataRef]:
    """The references of a BareMetalHost's ``spec`` (its JSON form), in the order userData,
    networkData, metaData; absent ones are left out."""
    refs: list[ConfigDataRef] = []
    network = spec.get("networkData")
    if not isinstance(network, Mapping) and spec.get("preprovisioningNetworkDataName"):
        network = {"name": spec["preprovisioningNetworkDataName"]}
    for field, ref, required in (
        ("userData", spec.get("userData"), True),
        ("networkData", network, False),
        ("metaData", spec.get("metaData"), True),
    ):
        if isinstance(ref, Mapping):
            namespace = ref.get("namespace")
            refs.append(
                ConfigDataRef(field, str(ref.get("name") or ""), namespace or None, required)
            )
    return refs


def read(ref: ConfigDataRef, secret: JsonObject | None, host_namespace: str) -> bytes | None:
    """The value ``ref`` names, from ``secret`` (None: not found). None when networkData's
    Secret has neither key; raises ConfigDataError for what upstream refuses."""
    name = ref.secret_name(host_namespace)
    if secret is None:
        raise ConfigDataError(ref.field, name, f"Secret not found in namespace {host_namespace!r}")
    data: Mapping[str, Any] = secret.get("data") or {}
    string_data: Mapping[str, Any] = secret.get("stringData") or {}
    for key in (ref.field, "value"):
        if key in data:
            try:
                return base64.b64decode(str(data[key]), validate=True)
            except (binascii.Error, ValueError):  # never the content: it is the secret
                raise ConfigDataError(ref.field, name, f"key {key} is not base64") from None
        if isinstance(string_data.get(key), str):
            return str(string_data[key]).encode()
    if ref.key_required:
        raise ConfigDataError(ref.field, name, f"the Secret has no key {ref.field} (nor value)")
    return None
