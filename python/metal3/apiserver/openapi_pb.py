"""OpenAPI v2 as gnostic's protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`),
the only form of /openapi/v2 older kubectl releases (1.20) read."""

from __future__ import annotations

import struct
from typing import Any

import yaml

PROTOBUF_MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _string(field: int, text: str) -> bytes:
    return _bytes(field, text.encode()) if text else b""


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(int(value))


def _bool(field: int, value: bool) -> bytes:
    return _key(field, 0) + _varint(1) if value else b""


def _double(field: int, value: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", float(value))


def _any(value: Any) -> bytes:
    """gnostic `Any`: the value as YAML text (field 2)."""
    return _string(2, yaml.safe_dump(value, default_flow_style=True).strip() or "null")


def _named_any(name: str, value: Any) -> bytes:
    return _string(1, name) + _bytes(2, _any(value))


def _schema(schema: dict[str, Any]) -> bytes:
    out = bytearray()
    out += _string(1, schema.get("$ref", ""))
    out += _string(2, schema.get("format", ""))
    out += _string(3, schema.get("title", ""))
    out += _string(4, schema.get("description", ""))
    if "default" in schema:
        out += _bytes(5, _any(schema["default"]))
    for field, name in ((7, "maximum"), (9, "minimum")):
        if isinstance(schema.get(name), int | float):
            out += _double(field, schema[name])
    out += _bool(8, bool(schema.get("exclusiveMaximum")))
    out += _bool(10, bool(schema.get("exclusiveMinimum")))
    for field, name in (
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
        (17, "maxProperties"),
        (18, "minProperties"),
    ):
        if isinstance(schema.get(name), int):
            out += _int(field, schema[name])
    out += _string(13, schema.get("pattern", ""))
    out += _bool(16, bool(schema.get("uniqueItems")))
    for name in schema.get("required") or []:
        out += _string(19, name)
    for value in schema.get("enum") or []:
        out += _bytes(20, _any(value))
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        out += _bytes(21, _bytes(1, _schema(additional)))
    elif isinstance(additional, bool):
        out += _bytes(21, _key(2, 0) + _varint(int(additional)))
    if isinstance(schema.get("type"), str):
        out += _bytes(22, _string(1, schema["type"]))
    if isinstance(schema.get("items"), dict):
        out += _bytes(23, _bytes(1, _schema(schema["items"])))
    for part in schema.get("allOf") or []:
        out += _bytes(24, _schema(part))
    properties = schema.get("properties")
    if isinstance(properties, dict):
        named = b"".join(
            _bytes(1, _string(1, name) + _bytes(2, _schema(sub)))
            for name, sub in properties.items()
        )
        out += _bytes(25, named)
    for name, value in schema.items():
        if name.startswith("x-"):
            out += _bytes(31, _named_any(name, value))
    return bytes(out)


def encode_document(document: dict[str, Any]) -> bytes:
    """The swagger document's version, info and definitions (paths are left out: kubectl
    reads only the models)."""
    out = bytearray()
    out += _string(1, document.get("swagger", "2.0"))
    info = document.get("info") or {}
    out += _bytes(2, _string(1, info.get("title", "")) + _string(2, info.get("version", "")))
    definitions = b"".join(
        _bytes(1, _string(1, name) + _bytes(2, _schema(schema)))
        for name, schema in (document.get("definitions") or {}).items()
    )
    out += _bytes(9, definitions)
    return bytes(out)
