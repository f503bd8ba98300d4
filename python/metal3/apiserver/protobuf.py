"""Decoding the Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`) for the
built-in kinds kubectl's typed clients send that way (`kubectl create namespace|configmap|
secret`). Responses are always JSON, which those clients also accept."""

from __future__ import annotations

import base64
from typing import Any

from metal3.apiserver.errors import ApiError, bad_request

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"

Fields = dict[int, list[Any]]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise bad_request("truncated protobuf varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise bad_request("protobuf varint too long")


def _fields(data: bytes) -> Fields:
    fields: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise bad_request("truncated protobuf field")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise bad_request(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _str(fields: Fields, number: int) -> str | None:
    values = fields.get(number)
    return values[-1].decode() if values else None


def _map(fields: Fields, number: int, as_base64: bool = False) -> dict[str, str]:
    result: dict[str, str] = {}
    for entry in fields.get(number, []):
        parts = _fields(entry)
        key = (parts.get(1) or [b""])[-1].decode()
        raw = (parts.get(2) or [b""])[-1]
        result[key] = base64.b64encode(raw).decode() if as_base64 else raw.decode()
    return result


def _metadata(data: bytes) -> dict[str, Any]:
    fields = _fields(data)
    meta: dict[str, Any] = {}
    for number, name in (
        (1, "name"),
        (2, "generateName"),
        (3, "namespace"),
        (6, "resourceVersion"),
        (5, "uid"),
    ):
        value = _str(fields, number)
        if value:
            meta[name] = value
    for number, name in ((11, "labels"), (12, "annotations")):
        mapping = _map(fields, number)
        if mapping:
            meta[name] = mapping
    finalizers = [f.decode() for f in fields.get(14, [])]
    if finalizers:
        meta["finalizers"] = finalizers
    owners = []
    for raw in fields.get(13, []):
        ref = _fields(raw)
        owner: dict[str, Any] = {
            "apiVersion": _str(ref, 5) or "",
            "kind": _str(ref, 1) or "",
            "name": _str(ref, 3) or "",
            "uid": _str(ref, 4) or "",
        }
        for number, name in ((6, "controller"), (7, "blockOwnerDeletion")):
            if ref.get(number):
                owner[name] = bool(ref[number][-1])
        owners.append(owner)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def decode(body: bytes) -> dict[str, Any]:
    """A Namespace, ConfigMap or Secret from its protobuf envelope; 415 for other kinds."""
    if not body.startswith(_MAGIC):
        raise bad_request("protobuf body without the k8s envelope")
    envelope = _fields(body[len(_MAGIC) :])
    type_meta = _fields((envelope.get(1) or [b""])[-1])
    api_version = _str(type_meta, 1) or ""
    kind = _str(type_meta, 2) or ""
    raw = _fields((envelope.get(2) or [b""])[-1])
    obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
    obj["metadata"] = _metadata((raw.get(1) or [b""])[-1])
    if api_version == "v1" and kind == "Namespace":
        spec = _fields((raw.get(2) or [b""])[-1])
        finalizers = [f.decode() for f in spec.get(1, [])]
        if finalizers:
            obj["spec"] = {"finalizers": finalizers}
    elif api_version == "v1" and kind == "ConfigMap":
        for number, name, encoded in ((2, "data", False), (3, "binaryData", True)):
            mapping = _map(raw, number, as_base64=encoded)
            if mapping:
                obj[name] = mapping
        if raw.get(4):
            obj["immutable"] = bool(raw[4][-1])
    elif api_version == "v1" and kind == "Secret":
        data = _map(raw, 2, as_base64=True)
        if data:
            obj["data"] = data
        secret_type = _str(raw, 3)
        if secret_type:
            obj["type"] = secret_type
        string_data = _map(raw, 4)
        if string_data:
            obj["stringData"] = string_data
        if raw.get(5):
            obj["immutable"] = bool(raw[5][-1])
    else:
        raise ApiError(
            415,
            f"the body of the request was in an unknown format ({MEDIA_TYPE} for "
            f"{api_version}/{kind}) - accepted media types include: application/json",
            "UnsupportedMediaType",
        )
    return obj
