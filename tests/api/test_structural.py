"""Pruning, defaulting and validation against structural schemas, as kube-apiserver does them."""

from __future__ import annotations

from typing import Any

from metal3.api.structural import admit, apply_defaults, prune, validate


def host(spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": "h", "anything": {"goes": 1}},
        "spec": spec,
        **extra,
    }


def test_defaults_fill_missing_fields_only(bmh_schema: dict[str, Any]) -> None:
    obj = host({"online": True})
    apply_defaults(obj, bmh_schema)
    assert obj["spec"]["automatedCleaningMode"] == "metadata"
    kept = host({"online": True, "automatedCleaningMode": "disabled"})
    apply_defaults(kept, bmh_schema)
    assert kept["spec"]["automatedCleaningMode"] == "disabled"


def test_defaults_reach_into_arrays(bmh_schema: dict[str, Any]) -> None:
    obj = host({"online": True, "raid": {"softwareRAIDVolumes": [{"level": "1"}]}})
    apply_defaults(obj, bmh_schema)
    assert obj["spec"]["raid"]["softwareRAIDVolumes"] == [{"level": "1", "rootVolume": False}]


def test_no_default_without_a_parent(bmh_schema: dict[str, Any]) -> None:
    obj: dict[str, Any] = {"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost"}
    apply_defaults(obj, bmh_schema)
    assert "spec" not in obj and "status" not in obj


def test_status_counters_default_to_zero(bmh_schema: dict[str, Any]) -> None:
    obj = host({"online": True}, status={"operationalStatus": "OK"})
    apply_defaults(obj, bmh_schema)
    assert obj["status"]["errorCount"] == 0
    assert obj["status"]["provisioningFailCount"] == 0


def test_null_in_non_nullable_field_is_dropped_but_kept_where_nullable(
    bmh_schema: dict[str, Any],
) -> None:
    obj = host({"online": True, "bootMode": None, "raid": {"hardwareRAIDVolumes": None}})
    apply_defaults(obj, bmh_schema)
    assert "bootMode" not in obj["spec"]
    assert obj["spec"]["raid"] == {"hardwareRAIDVolumes": None}
    assert validate(obj, bmh_schema) == []


def test_unknown_fields_are_pruned_everywhere_but_metadata(bmh_schema: dict[str, Any]) -> None:
    obj = host(
        {
            "online": True,
            "made_up": 1,
            "bmc": {"address": "ipmi://x", "credentialsName": "c", "port": 1},
            "taints": [{"key": "k", "effect": "NoSchedule", "color": "red"}],
        },
        extraTop=True,
    )
    pruned = prune(obj, bmh_schema)
    assert sorted(pruned) == ["extraTop", "spec.bmc.port", "spec.made_up", "spec.taints[0].color"]
    assert obj["metadata"] == {"name": "h", "anything": {"goes": 1}}
    assert obj["spec"]["taints"] == [{"key": "k", "effect": "NoSchedule"}]


def test_preserve_unknown_fields_and_int_or_string() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "port": {"x-kubernetes-int-or-string": True},
                    "when": {"type": "string", "format": "date-time"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            }
        },
    }
    obj: dict[str, Any] = {
        "spec": {"free": {"a": [1, {"b": 2}]}, "port": "http", "labels": {"x": "y"}},
    }
    assert prune(obj, schema) == []
    assert validate(obj, schema) == []
    obj["spec"]["port"] = 8080
    assert validate(obj, schema) == []
    obj["spec"]["port"] = 1.5
    obj["spec"]["when"] = "yesterday"
    obj["spec"]["labels"]["n"] = 3
    paths = sorted(e.path for e in validate(obj, schema))
    assert paths == ["spec.labels.n", "spec.port", "spec.when"]
    obj["spec"]["when"] = "2026-11-21T23:00:00.5+01:00"
    assert "spec.when" not in {e.path for e in validate(obj, schema)}


def test_messages_look_like_the_api_servers(bmh_schema: dict[str, Any]) -> None:
    obj = host({"online": True, "bootMode": "BIOS", "bootMACAddress": "zz"})
    _, errors = admit(obj, bmh_schema)
    by_path = {e.path: e for e in errors}
    assert by_path["spec.bootMode"].message == (
        'Unsupported value: "BIOS": supported values: "UEFI", "UEFISecureBoot", "legacy"'
    )
    assert by_path["spec.bootMACAddress"].reason == "FieldValueInvalid"
    assert (
        "should match '[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}'"
        in by_path["spec.bootMACAddress"].message
    )


def test_condition_shape_is_enforced(bmh_schema: dict[str, Any]) -> None:
    condition = {
        "type": "Ready",
        "status": "Maybe",
        "lastTransitionTime": "2026-11-21T23:00:00Z",
        "reason": "",
        "message": "ok",
    }
    status = {
        "operationalStatus": "OK",
        "errorMessage": "",
        "poweredOn": True,
        "provisioning": {"state": "available", "ID": "x"},
        "conditions": [condition],
    }
    _, errors = admit(host({"online": True}, status=status), bmh_schema)
    # An empty reason breaks both its pattern and its minimum length.
    assert sorted(e.path for e in errors) == [
        "status.conditions[0].reason",
        "status.conditions[0].reason",
        "status.conditions[0].status",
    ]
