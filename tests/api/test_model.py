"""Parsing and serialising the API types: lossless round trips, unknown fields, clear errors."""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import orjson
import pytest

from api.examples import valid_examples
from metal3.api import BareMetalHost, HardwareData, HardwareDetails, ModelError
from metal3.api.baremetalhost import BareMetalHostSpec, BMCDetails, Image
from metal3.api.constants import API_VERSION, ProvisioningState
from metal3.bmc.credentials import credentials_from_secret
from metal3.controllers.baremetalhost.reconciler import secret_value

MODELS: dict[str, type[BareMetalHost] | type[HardwareData]] = {
    "BareMetalHost": BareMetalHost,
    "HardwareData": HardwareData,
}


EXAMPLES = valid_examples()
MODELLED = [(name, obj) for name, obj in EXAMPLES if obj["kind"] in MODELS]
SECRETS = [(name, obj) for name, obj in EXAMPLES if obj["kind"] == "Secret"]


def test_every_example_is_a_modelled_type_or_a_secret() -> None:
    assert [name for name, obj in EXAMPLES if obj["kind"] not in {*MODELS, "Secret"}] == []
    assert {obj["kind"] for _, obj in MODELLED} == set(MODELS)
    assert SECRETS


@pytest.mark.parametrize(("name", "obj"), MODELLED, ids=[n for n, _ in MODELLED])
def test_examples_round_trip_losslessly(name: str, obj: dict[str, Any]) -> None:
    model = MODELS[obj["kind"]]
    original = copy.deepcopy(obj)
    parsed = model.from_json(obj)
    assert parsed.to_json() == original
    # Through JSON bytes (orjson) as the API server and client exchange it.
    again = model.loads(orjson.dumps(original))
    assert orjson.loads(again.dumps()) == original
    assert obj == original, "parsing must not modify its input"


def base64_tool_decode(text: str) -> str:
    """Reference decoding by coreutils `base64 -d`."""
    out = subprocess.run(["base64", "-d"], input=text.encode(), capture_output=True, check=True)
    return out.stdout.decode()


@pytest.mark.parametrize(("name", "obj"), SECRETS, ids=[n for n, _ in SECRETS])
def test_example_secrets_read_as_stored(name: str, obj: dict[str, Any]) -> None:
    """The operator reads Secrets as plain objects: every value comes out as `base64 -d` (for
    data) or the manifest (for stringData) gives it, and reading modifies nothing."""
    original = copy.deepcopy(obj)
    expected = {key: base64_tool_decode(value) for key, value in (obj.get("data") or {}).items()}
    expected.update(obj.get("stringData") or {})
    assert expected, f"{name} holds no values"
    assert {key: secret_value(obj, key) for key in expected} == expected
    if {"username", "password"} <= set(expected):
        credentials = credentials_from_secret(obj)
        assert credentials.username == expected["username"]
        assert credentials.password == expected["password"]
        assert expected["password"] not in repr(credentials)
    assert obj == original, "reading must not modify its input"


def full_host() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "BareMetalHost",
        "metadata": {
            "name": "h",
            "namespace": "ns",
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            "labels": {"a": "b"},
        },
        "spec": {
            "online": False,
            "bmc": {"address": "ipmi://10.0.0.1", "credentialsName": "s", "vendorHint": "x"},
            "futureSpecField": {"nested": [1, 2, {"deep": True}]},
            "image": {"url": "http://x/y.img", "checksum": "abc", "checksumType": "md5"},
            "rootDeviceHints": {"minSizeGigabytes": 0, "rotational": False},
        },
        "status": {
            "operationalStatus": "OK",
            "errorMessage": "",
            "errorCount": 0,
            "provisioningFailCount": 0,
            "poweredOn": False,
            "provisioning": {"state": "provisioned", "ID": "abc-123", "newThing": 7},
            "hardware": {
                "cpu": {"arch": "x86_64", "clockMegahertz": 2400.5, "count": 8},
                "nics": [{"name": "eth0", "mac": "00:11:22:33:44:55", "speedGbps": 10}],
                "ramMebibytes": 16384,
            },
            "operationHistory": {"register": {"start": "2026-01-01T00:00:00Z", "end": None}},
        },
    }


def test_unknown_fields_survive_at_every_level() -> None:
    raw = full_host()
    host = BareMetalHost.from_json(raw)
    assert host.spec is not None and host.spec.extra == {
        "futureSpecField": {"nested": [1, 2, {"deep": True}]}
    }
    assert host.spec.bmc is not None and host.spec.bmc.extra == {"vendorHint": "x"}
    assert host.metadata is not None and "managedFields" in host.metadata.extra
    assert host.status is not None and host.status.provisioning is not None
    assert host.status.provisioning.extra == {"newThing": 7}
    out = host.to_json()
    # `end: null` is an absent value (as the API server would store it); all else is kept.
    expected = copy.deepcopy(raw)
    del expected["status"]["operationHistory"]["register"]["end"]
    assert out == expected


def test_typed_access_uses_python_names_and_upstream_values() -> None:
    host = BareMetalHost.from_json(full_host())
    assert host.spec is not None and host.status is not None
    assert host.spec.online is False
    assert host.spec.root_device_hints is not None
    assert host.spec.root_device_hints.min_size_gigabytes == 0
    assert host.status.provisioning is not None
    assert host.status.provisioning.id == "abc-123"
    assert host.status.provisioning.state == ProvisioningState.PROVISIONED
    assert host.status.hardware is not None and host.status.hardware.cpu is not None
    assert host.status.hardware.cpu.clock_megahertz == 2400.5


def test_integral_numbers_stay_integral() -> None:
    details = HardwareDetails.from_json({"cpu": {"clockMegahertz": 2000}})
    assert orjson.dumps(details.to_json()) == b'{"cpu":{"clockMegahertz":2000}}'


def test_building_a_host_in_code_serialises_to_the_wire_form() -> None:
    spec = BareMetalHostSpec(
        online=True,
        bmc=BMCDetails(address="redfish://10.0.0.2/redfish/v1/Systems/1", credentials_name="c"),
        image=Image(url="http://i/os.qcow2", checksum="d" * 64, checksum_type="sha256"),
        boot_mac_address="52:54:00:00:00:01",
    )
    host = BareMetalHost.new("w0", "metal3", spec)
    assert host.to_json() == {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": "w0", "namespace": "metal3"},
        "spec": {
            "bmc": {"address": "redfish://10.0.0.2/redfish/v1/Systems/1", "credentialsName": "c"},
            "bootMACAddress": "52:54:00:00:00:01",
            "online": True,
            "image": {"url": "http://i/os.qcow2", "checksum": "d" * 64, "checksumType": "sha256"},
        },
    }


def test_copy_is_deep() -> None:
    host = BareMetalHost.from_json(full_host())
    clone = host.copy()
    assert clone == host
    assert clone.spec is not None and clone.spec.bmc is not None
    clone.spec.bmc.address = "ipmi://changed"
    assert host.spec is not None and host.spec.bmc is not None
    assert host.spec.bmc.address == "ipmi://10.0.0.1"


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (lambda h: h["spec"].__setitem__("online", "yes"), ".spec.online", "expected a boolean"),
        (
            lambda h: h["status"]["hardware"].__setitem__("ramMebibytes", 1.5),
            ".status.hardware.ramMebibytes",
            "expected an integer",
        ),
        (
            lambda h: h["status"]["hardware"]["nics"].__setitem__(0, "eth0"),
            ".status.hardware.nics[0]",
            "expected an object",
        ),
        (lambda h: h["spec"].__setitem__("bmc", []), ".spec.bmc", "expected an object"),
        (
            lambda h: h["metadata"].__setitem__("labels", {"a": 1}),
            ".metadata.labels.a",
            "expected a string",
        ),
        (
            lambda h: h["status"].__setitem__("errorCount", True),
            ".status.errorCount",
            "expected an integer",
        ),
    ],
)
def test_wrong_types_name_the_path(mutate: Any, path: str, message: str) -> None:
    raw = full_host()
    mutate(raw)
    with pytest.raises(ModelError) as info:
        BareMetalHost.from_json(raw)
    assert info.value.path == path
    assert message in str(info.value)


def test_not_an_object_at_the_root() -> None:
    with pytest.raises(ModelError, match="expected an object, got array"):
        BareMetalHost.loads(b"[]")
