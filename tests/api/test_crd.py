"""The CRDs in crds/: current with the types, agreeing field by field, true to upstream Metal3."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml

from api.examples import CRDS
from metal3.api import BareMetalHost, HardwareData
from metal3.api.crd import main as crd_main
from metal3.api.model import Model, unwrap_optional

JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CRDS / name).read_text())
    return data


def test_committed_crds_are_current(tmp_path: Path) -> None:
    assert crd_main(["--check", "--out", str(CRDS)]) == 0
    # And --check really detects drift.
    for path in CRDS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text().replace("bmhost", "bmhst"))
    assert crd_main(["--check", "--out", str(tmp_path)]) == 1


def agree(model: type[Model], schema: dict[str, Any], path: str) -> list[str]:
    """Differences between a model type and an object schema, recursively."""
    problems: list[str] = []
    properties: dict[str, Any] = schema.get("properties", {})
    by_json = {f.schema.json_name: f for f in model.fields()}
    for name in sorted(set(properties) - set(by_json)):
        problems.append(f"{path}.{name}: in the CRD, not in {model.__name__}")
    for name in sorted(set(by_json) - set(properties)):
        problems.append(f"{path}.{name}: in {model.__name__}, not in the CRD")
    required = set(schema.get("required", []))
    for name, f in by_json.items():
        if name not in properties:
            continue
        sub = properties[name]
        if f.schema.required != (name in required):
            problems.append(f"{path}.{name}: required differs")
        if f.schema.enum is not None and list(f.schema.enum) != sub.get("enum"):
            problems.append(f"{path}.{name}: enum differs")
        if f.schema.pattern != sub.get("pattern"):
            problems.append(f"{path}.{name}: pattern differs")
        if f.schema.schema_override is None:
            problems.extend(type_agrees(f.hint, sub, f"{path}.{name}"))
    return problems


def type_agrees(hint: Any, schema: dict[str, Any], path: str) -> list[str]:
    hint = unwrap_optional(hint)
    if hint in JSON_TYPES:
        ok = schema.get("type") == JSON_TYPES[hint]
        return [] if ok else [f"{path}: type {schema.get('type')} != {JSON_TYPES[hint]}"]
    if get_origin(hint) is list:
        if schema.get("type") != "array":
            return [f"{path}: not an array"]
        return type_agrees(get_args(hint)[0], schema["items"], f"{path}[]")
    if get_origin(hint) is dict:
        if schema.get("type") != "object":
            return [f"{path}: not a map"]
        return type_agrees(get_args(hint)[1], schema["additionalProperties"], f"{path}{{}}")
    if isinstance(hint, type) and issubclass(hint, Model):
        if schema.get("type") != "object":
            return [f"{path}: not an object"]
        return agree(hint, schema, path)
    return [f"{path}: unexpected type {hint!r}"]


@pytest.mark.parametrize(
    ("file", "model"),
    [
        ("metal3.io_baremetalhosts.yaml", BareMetalHost),
        ("metal3.io_hardwaredata.yaml", HardwareData),
    ],
)
def test_crd_and_types_agree_field_by_field(file: str, model: type[Model]) -> None:
    schema = load(file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert agree(model, schema, "") == []


def test_agreement_check_catches_a_missing_field() -> None:
    schema = load("metal3.io_baremetalhosts.yaml")["spec"]["versions"][0]["schema"]
    spec_schema = schema["openAPIV3Schema"]["properties"]["spec"]
    del spec_schema["properties"]["bootMode"]
    spec_schema["properties"]["bogus"] = {"type": "string"}
    problems = agree(BareMetalHost, schema["openAPIV3Schema"], "")
    assert ".spec.bogus: in the CRD, not in BareMetalHostSpec" in problems
    assert ".spec.bootMode: in BareMetalHostSpec, not in the CRD" in problems


# Facts from the upstream Metal3 API reference, stated independently of our code.
def bmh() -> dict[str, Any]:
    return load("metal3.io_baremetalhosts.yaml")


def bmh_schema() -> dict[str, Any]:
    schema: dict[str, Any] = bmh()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_names_scope_and_subresources_match_upstream() -> None:
    crd = bmh()
    assert crd["metadata"]["name"] == "baremetalhosts.metal3.io"
    assert crd["spec"]["names"]["shortNames"] == ["bmh", "bmhost"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    hd = load("metal3.io_hardwaredata.yaml")
    assert hd["spec"]["names"]["shortNames"] == ["hd"]
    assert "subresources" not in hd["spec"]["versions"][0]


def test_printer_columns_match_upstream() -> None:
    columns = bmh()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"], c.get("priority", 0)) for c in columns] == [
        ("Status", ".status.operationalStatus", 1),
        ("State", ".status.provisioning.state", 0),
        ("Consumer", ".spec.consumerRef.name", 0),
        ("BMC", ".spec.bmc.address", 1),
        ("Online", ".spec.online", 0),
        ("Error", ".status.errorType", 0),
        ("Age", ".metadata.creationTimestamp", 0),
    ]


def test_spec_facts_match_upstream() -> None:
    spec = bmh_schema()["properties"]["spec"]
    props = spec["properties"]
    assert spec["required"] == ["online"]
    assert props["bootMode"]["enum"] == ["UEFI", "UEFISecureBoot", "legacy"]
    assert props["automatedCleaningMode"] == {
        "type": "string",
        "description": props["automatedCleaningMode"]["description"],
        "enum": ["metadata", "disabled"],
        "default": "metadata",
    }
    assert props["inspectionMode"]["enum"] == ["disabled", "agent", "fast"]
    assert props["bootMACAddress"]["pattern"] == "[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"
    image = props["image"]
    assert image["required"] == ["url"]
    assert image["properties"]["checksumType"]["enum"] == ["md5", "sha256", "sha512", "auto"]
    assert image["properties"]["format"]["enum"] == ["raw", "qcow2", "vdi", "vmdk", "live-iso"]
    assert props["bmc"]["required"] == ["address", "credentialsName"]
    hints = props["rootDeviceHints"]["properties"]
    assert sorted(hints) == sorted(
        [
            "deviceName", "hctl", "model", "vendor", "serialNumber", "minSizeGigabytes",
            "wwn", "wwnWithExtension", "wwnVendorExtension", "rotational",
        ]
    )  # fmt: skip
    raid = props["raid"]["properties"]
    assert raid["softwareRAIDVolumes"]["maxItems"] == 2
    assert raid["hardwareRAIDVolumes"]["nullable"] is True
    hw_levels = raid["hardwareRAIDVolumes"]["items"]["properties"]["level"]["enum"]
    assert hw_levels == ["0", "1", "2", "5", "6", "1+0", "5+0", "6+0"]
    sw_levels = raid["softwareRAIDVolumes"]["items"]["properties"]["level"]["enum"]
    assert sw_levels == ["0", "1", "1+0"]
    for name in [
        "taints", "firmware", "hardwareProfile", "consumerRef", "userData", "networkData",
        "metaData", "preprovisioningNetworkDataName", "description", "externallyProvisioned",
        "customDeploy", "architecture", "disablePowerOff",
    ]:  # fmt: skip
        assert name in props, name


def test_status_facts_match_upstream() -> None:
    status = bmh_schema()["properties"]["status"]
    assert sorted(status["required"]) == [
        "errorCount", "errorMessage", "operationalStatus", "poweredOn", "provisioning",
        "provisioningFailCount",
    ]  # fmt: skip
    props = status["properties"]
    assert props["operationalStatus"]["enum"] == [
        "", "OK", "discovered", "error", "delayed", "detached", "servicing",
    ]  # fmt: skip
    assert set(props["errorType"]["enum"]) == {
        "provisioned registration error", "registration error", "inspection error",
        "preparation error", "provisioning error", "power management error",
        "detach error", "servicing error",
    }  # fmt: skip
    provisioning = props["provisioning"]
    assert provisioning["required"] == ["state", "ID"]
    assert sorted(provisioning["properties"]) == sorted(
        ["state", "ID", "image", "rootDeviceHints", "bootMode", "raid", "firmware", "customDeploy"]
    )
    assert sorted(props["operationHistory"]["properties"]) == [
        "deprovision", "inspect", "provision", "register",
    ]  # fmt: skip
    assert props["conditions"]["maxItems"] == 32
    hardware = props["hardware"]["properties"]
    for name in ["cpu", "nics", "storage", "firmware", "systemVendor", "ramMebibytes", "hostname"]:
        assert name in hardware, name
    assert hardware["storage"]["items"]["properties"]["type"]["enum"] == ["HDD", "SSD", "NVME"]
    for name in ["goodCredentials", "triedCredentials", "lastUpdated", "lastAttemptedImage"]:
        assert name in props, name
