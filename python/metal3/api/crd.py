"""CustomResourceDefinitions generated from the Python types.

The files in ``crds/`` are this module's output (``python -m metal3.api.crd`` rewrites them,
``--check`` fails when they are stale), so the schema the API server enforces and the types the
operator uses cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from metal3.api.baremetalhost import BareMetalHost
from metal3.api.constants import (
    BAREMETALHOST_KIND,
    BAREMETALHOST_PLURAL,
    GROUP,
    HARDWAREDATA_KIND,
    HARDWAREDATA_PLURAL,
    HOSTCLAIM_KIND,
    HOSTCLAIM_PLURAL,
    HOSTDEPLOYPOLICY_KIND,
    HOSTDEPLOYPOLICY_PLURAL,
    INFRASTRUCTURE_GROUP,
    INFRASTRUCTURE_VERSION,
    METAL3MACHINE_KIND,
    METAL3MACHINE_PLURAL,
    VERSION,
)
from metal3.api.hardwaredata import HardwareData
from metal3.api.hostclaim import HostClaim, HostDeployPolicy
from metal3.api.metal3machine import Metal3Machine
from metal3.api.model import FieldSchema, Model, unwrap_optional

JsonSchema = dict[str, Any]


def openapi_schema(model: type[Model], description: str | None = None) -> JsonSchema:
    """The structural OpenAPI v3 schema of a model type."""
    schema: JsonSchema = {}
    if description:
        schema["description"] = description
    properties: JsonSchema = {}
    required: list[str] = []
    for f in model.fields():
        properties[f.schema.json_name] = _field_schema(f.hint, f.schema)
        if f.schema.required:
            required.append(f.schema.json_name)
    schema["properties"] = properties
    if required:
        schema["required"] = required
    schema["type"] = "object"
    return schema


def _field_schema(hint: Any, facts: FieldSchema) -> JsonSchema:
    if facts.schema_override is not None:
        schema = dict(facts.schema_override)
        schema.setdefault("description", facts.description)
        return schema
    schema = _type_schema(unwrap_optional(hint))
    schema["description"] = facts.description
    constraints: dict[str, Any] = {
        "enum": list(facts.enum) if facts.enum is not None else None,
        "pattern": facts.pattern,
        "format": facts.format,
        "default": facts.default,
        "minimum": facts.minimum,
        "maximum": facts.maximum,
        "minItems": facts.min_items,
        "maxItems": facts.max_items,
        "minLength": facts.min_length,
        "maxLength": facts.max_length,
        "nullable": facts.nullable or None,
    }
    schema.update({k: v for k, v in constraints.items() if v is not None})
    return schema


def _type_schema(hint: Any) -> JsonSchema:
    origin = get_origin(hint)
    if hint is str:
        return {"type": "string"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is Any:
        return {"x-kubernetes-preserve-unknown-fields": True}
    if origin is list:
        (item,) = get_args(hint)
        return {"type": "array", "items": _type_schema(unwrap_optional(item))}
    if origin is dict:
        _, value = get_args(hint)
        return {"type": "object", "additionalProperties": _type_schema(unwrap_optional(value))}
    if isinstance(hint, type) and issubclass(hint, Model):
        nested = openapi_schema(hint)
        nested.pop("description", None)
        return nested
    raise TypeError(f"no schema for {hint!r}")


def _printer_column(
    name: str, json_path: str, description: str, *, type_: str = "string", priority: int = 0
) -> JsonSchema:
    column: JsonSchema = {
        "name": name,
        "type": type_,
        "jsonPath": json_path,
        "description": description,
    }
    if priority:
        column["priority"] = priority
    return column


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: list[str],
    schema: JsonSchema,
    columns: list[JsonSchema],
    status_subresource: bool,
    group: str = GROUP,
    version_name: str = VERSION,
    categories: list[str] | None = None,
) -> JsonSchema:
    version: JsonSchema = {
        "name": version_name,
        "served": True,
        "storage": True,
        "additionalPrinterColumns": columns,
        "schema": {"openAPIV3Schema": schema},
    }
    if status_subresource:
        version["subresources"] = {"status": {}}
    names: JsonSchema = {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": singular,
        "shortNames": short_names,
    }
    if categories:
        names["categories"] = categories
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": names,
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def baremetalhost_crd() -> JsonSchema:
    return _crd(
        kind=BAREMETALHOST_KIND,
        plural=BAREMETALHOST_PLURAL,
        singular="baremetalhost",
        short_names=["bmh", "bmhost"],
        schema=openapi_schema(
            BareMetalHost, "BareMetalHost is a physical server managed through its BMC."
        ),
        columns=[
            _printer_column(
                "Status", ".status.operationalStatus", "Operational status", priority=1
            ),
            _printer_column("State", ".status.provisioning.state", "Provisioning status"),
            _printer_column("Consumer", ".spec.consumerRef.name", "Consumer using this host"),
            _printer_column("BMC", ".spec.bmc.address", "Address of the BMC", priority=1),
            _printer_column("Online", ".spec.online", "Whether the host should be powered on"),
            _printer_column("Error", ".status.errorType", "Type of the most recent error"),
            _printer_column(
                "Age", ".metadata.creationTimestamp", "Time since creation", type_="date"
            ),
        ],
        status_subresource=True,
    )


def hardwaredata_crd() -> JsonSchema:
    return _crd(
        kind=HARDWAREDATA_KIND,
        plural=HARDWAREDATA_PLURAL,
        singular="hardwaredata",
        short_names=["hd"],
        schema=openapi_schema(
            HardwareData, "HardwareData holds the inspection results of a BareMetalHost."
        ),
        columns=[
            _printer_column(
                "Age", ".metadata.creationTimestamp", "Time since creation", type_="date"
            ),
        ],
        status_subresource=False,
    )


def metal3machine_crd() -> JsonSchema:
    return _crd(
        kind=METAL3MACHINE_KIND,
        plural=METAL3MACHINE_PLURAL,
        singular="metal3machine",
        short_names=["m3m", "m3machine", "m3machines", "metal3m", "metal3machine"],
        schema=openapi_schema(
            Metal3Machine, "Metal3Machine is Cluster API's bare-metal machine (CAPM3's API)."
        ),
        columns=[
            _printer_column(
                "Age", ".metadata.creationTimestamp", "Time since creation", type_="date"
            ),
            _printer_column("ProviderID", ".spec.providerID", "Provider ID"),
            _printer_column("Ready", ".status.ready", "Whether the machine is ready"),
            _printer_column(
                "Cluster",
                ".metadata.labels.cluster\\.x-k8s\\.io/cluster-name",
                "Cluster the machine belongs to",
            ),
            _printer_column("Phase", ".status.phase", "CAPM3's phase (not set here)"),
        ],
        status_subresource=True,
        group=INFRASTRUCTURE_GROUP,
        version_name=INFRASTRUCTURE_VERSION,
        categories=["cluster-api"],
    )


def hostclaim_crd() -> JsonSchema:
    return _crd(
        kind=HOSTCLAIM_KIND,
        plural=HOSTCLAIM_PLURAL,
        singular="hostclaim",
        short_names=["hc"],
        schema=openapi_schema(
            HostClaim, "HostClaim asks for a BareMetalHost by label selector, with its workload."
        ),
        columns=[
            _printer_column("Host", ".status.bareMetalHost.name", "The bound BareMetalHost"),
            _printer_column(
                "Host Namespace",
                ".status.bareMetalHost.namespace",
                "Namespace of the bound BareMetalHost",
                priority=1,
            ),
            _printer_column("State", ".status.provisioningState", "The host's provisioning state"),
            _printer_column(
                "Age", ".metadata.creationTimestamp", "Time since creation", type_="date"
            ),
        ],
        status_subresource=True,
    )


def hostdeploypolicy_crd() -> JsonSchema:
    return _crd(
        kind=HOSTDEPLOYPOLICY_KIND,
        plural=HOSTDEPLOYPOLICY_PLURAL,
        singular="hostdeploypolicy",
        short_names=["hdp"],
        schema=openapi_schema(
            HostDeployPolicy,
            "HostDeployPolicy says which namespaces' HostClaims may bind this namespace's hosts.",
        ),
        columns=[
            _printer_column(
                "Age", ".metadata.creationTimestamp", "Time since creation", type_="date"
            ),
        ],
        status_subresource=True,
    )


def all_crds() -> dict[str, JsonSchema]:
    """File name in ``crds/`` -> CRD object."""
    return {
        f"{GROUP}_{BAREMETALHOST_PLURAL}.yaml": baremetalhost_crd(),
        f"{GROUP}_{HARDWAREDATA_PLURAL}.yaml": hardwaredata_crd(),
        f"{GROUP}_{HOSTCLAIM_PLURAL}.yaml": hostclaim_crd(),
        f"{GROUP}_{HOSTDEPLOYPOLICY_PLURAL}.yaml": hostdeploypolicy_crd(),
        f"{INFRASTRUCTURE_GROUP}_{METAL3MACHINE_PLURAL}.yaml": metal3machine_crd(),
    }


HEADER = "# Generated by `python -m metal3.api.crd` from python/metal3/api: do not edit.\n"


def render(crd: JsonSchema) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("crds"), help="folder to write into")
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    stale = []
    for name, crd in all_crds().items():
        path: Path = args.out / name
        text = render(crd)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale CRDs (run python -m metal3.api.crd): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
