"""Every example manifest against the CRD schema: the valid ones pass, each invalid one fails
for exactly the reason its header states."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import pytest

from api.examples import EXAMPLES, crd_schema, invalid_examples, valid_examples
from metal3.api.manifests import load_file
from metal3.api.structural import admit, validate

SCHEMAS = {
    "BareMetalHost": crd_schema("baremetalhosts"),
    "HardwareData": crd_schema("hardwaredata"),
}


CUSTOM = [(name, obj) for name, obj in valid_examples() if obj["kind"] in SCHEMAS]
SECRETS = [(name, obj) for name, obj in valid_examples() if obj["kind"] == "Secret"]


def test_examples_are_custom_resources_or_secrets() -> None:
    assert [n for n, o in valid_examples() if o["kind"] not in {*SCHEMAS, "Secret"}] == []
    assert {o["kind"] for _, o in CUSTOM} == set(SCHEMAS)


@pytest.mark.parametrize(("name", "obj"), CUSTOM, ids=[n for n, _ in CUSTOM])
def test_valid_example_passes(name: str, obj: dict[str, Any]) -> None:
    admitted = copy.deepcopy(obj)
    pruned, errors = admit(admitted, SCHEMAS[obj["kind"]])
    assert errors == []
    assert pruned == [], "examples must not carry fields the API server would drop"


# Kubernetes' rules for a Secret (core/v1 types and apimachinery's name validation).
SECRET_FIELDS = {"apiVersion", "kind", "metadata", "type", "data", "stringData", "immutable"}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


@pytest.mark.parametrize(("name", "obj"), SECRETS, ids=[n for n, _ in SECRETS])
def test_example_secret_is_a_valid_opaque_secret(name: str, obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "v1"
    assert set(obj) <= SECRET_FIELDS, "examples must not carry fields the API server would drop"
    assert obj.get("type") == "Opaque"
    metadata = obj["metadata"]
    assert DNS1123_SUBDOMAIN.match(metadata["name"]) and len(metadata["name"]) <= 253
    assert DNS1123_LABEL.match(metadata["namespace"]) and len(metadata["namespace"]) <= 63
    data, string_data = obj.get("data") or {}, obj.get("stringData") or {}
    assert data or string_data, "a Secret with no values"
    for key, value in {**data, **string_data}.items():
        assert SECRET_KEY.match(key) and len(key) <= 253, key
        assert isinstance(value, str), key
    for key, value in data.items():
        assert base64.b64decode(value, validate=True), f"data.{key} is empty"


def test_every_host_example_has_usable_credentials() -> None:
    secrets: dict[str, dict[str, Any]] = {}
    hosts: list[dict[str, Any]] = []
    for _, obj in valid_examples():
        if obj["kind"] == "Secret":
            secrets[obj["metadata"]["name"]] = obj
        elif obj["kind"] == "BareMetalHost":
            hosts.append(obj)
    assert len(hosts) >= 6
    for host in hosts:
        secret = secrets[host["spec"]["bmc"]["credentialsName"]]
        for key in ("username", "password"):
            value = base64.b64decode(secret["data"][key]).decode()
            assert value.strip(), f"{host['metadata']['name']}: empty {key}"


def test_examples_cover_each_bmc_flavour() -> None:
    schemes = {
        obj["spec"]["bmc"]["address"].split("://")[0]
        for _, obj in valid_examples()
        if obj["kind"] == "BareMetalHost"
    }
    assert {"ipmi", "redfish+https", "redfish-virtualmedia+https"} <= schemes
    hosts = [o for _, o in valid_examples() if o["kind"] == "BareMetalHost"]
    assert any(h["spec"].get("externallyProvisioned") for h in hosts)
    assert any({"image", "userData", "rootDeviceHints"} <= set(h["spec"]) for h in hosts), (
        "one example provisions an image with user data and root device hints"
    )


EXPECT = re.compile(r"^# expect-error: (?P<path>\S+): (?P<message>.+)$", re.MULTILINE)


def expectation(path: Path) -> tuple[str, str]:
    match = EXPECT.search(path.read_text())
    assert match, f"{path.name} states no expected error"
    return match["path"], match["message"].strip()


@pytest.mark.parametrize("path", invalid_examples(), ids=lambda p: p.name)
def test_invalid_example_fails_for_its_stated_reason(path: Path) -> None:
    want_path, want_message = expectation(path)
    (obj,) = load_file(path)
    _, errors = admit(obj, SCHEMAS[obj["kind"]])
    assert errors, "accepted an invalid manifest"
    assert [e.path for e in errors] == [want_path], errors
    assert want_message in errors[0].message, errors[0]


def test_there_are_enough_invalid_examples() -> None:
    assert len(invalid_examples()) >= 10
    assert (EXAMPLES / "invalid").is_dir()


def test_error_reasons_are_kubernetes_cause_types() -> None:
    reasons = set()
    for path in invalid_examples():
        (obj,) = load_file(path)
        reasons |= {e.reason for e in validate(obj, SCHEMAS[obj["kind"]])}
    assert reasons <= {
        "FieldValueRequired", "FieldValueInvalid", "FieldValueNotSupported",
        "FieldValueTypeInvalid", "FieldValueTooMany", "FieldValueTooLong",
    }  # fmt: skip
    assert {"FieldValueRequired", "FieldValueNotSupported", "FieldValueInvalid"} <= reasons
