"""The HardwareData resource: inspection results of a host, owned by its BareMetalHost."""

from __future__ import annotations

from dataclasses import dataclass

from metal3.api.hardware import HardwareDetails
from metal3.api.meta import ObjectMeta
from metal3.api.model import Model, prop


@dataclass(kw_only=True)
class HardwareDataSpec(Model):
    hardware: HardwareDetails | None = prop("hardware", "The host's hardware, as inspected.")


@dataclass(kw_only=True)
class HardwareData(Model):
    api_version: str | None = prop("apiVersion", "APIVersion of the object.")
    kind: str | None = prop("kind", "Kind of the object.")
    metadata: ObjectMeta | None = prop(
        "metadata", "Standard object metadata.", schema_override={"type": "object"}
    )
    spec: HardwareDataSpec | None = prop("spec", "The inspected hardware.")
