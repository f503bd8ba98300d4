"""Server-side printing: meta.k8s.io Table responses (what `kubectl get` asks for)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from metal3.apiserver.objects import human_duration, parse_time
from metal3.apiserver.registry import ResourceType

Obj = dict[str, Any]

_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace. It is required when creating "
    "resources, although some resources may allow a client to request the generation of an "
    "appropriate name automatically.",
    "priority": 0,
}
_AGE_COLUMN = {
    "name": "Age",
    "type": "string",
    "format": "",
    "description": "CreationTimestamp is a timestamp representing the server time when this "
    "object was created.",
    "priority": 0,
}
_TOKEN = re.compile(
    r"\.?((?:[A-Za-z0-9_\-/]|\\\.)+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]|\[\*\]"
)


def _column(name: str, kind: str, description: str = "", priority: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "format": "",
        "description": description,
        "priority": priority,
    }


def json_path(obj: Any, path: str) -> Any:
    """The subset of kubectl JSONPath printer columns use: `.a.b` (`\\.` escapes a dot in
    a key), `[0]`, `[*]`, `[?(@.type=="Ready")]`; returns None when nothing matches."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    nodes: list[Any] = [obj]
    position = 0
    while position < len(path):
        match = _TOKEN.match(path, position)
        if match is None:
            return None
        position = match.end()
        field, index, filter_key, filter_value = match.groups()
        if field is not None:
            field = field.replace("\\.", ".")  # `labels.cluster\.x-k8s\.io/name`: one key
        following: list[Any] = []
        for node in nodes:
            if field is not None and isinstance(node, dict) and field in node:
                following.append(node[field])
            elif index is not None and isinstance(node, list) and int(index) < len(node):
                following.append(node[int(index)])
            elif filter_key is not None and isinstance(node, list):
                following.extend(
                    item for item in node if str(json_path(item, "." + filter_key)) == filter_value
                )
            elif match.group(0) == "[*]" and isinstance(node, list):
                following.extend(node)
        nodes = following
        if not nodes:
            return None
    if len(nodes) == 1:
        return nodes[0]
    return nodes


def _age(obj: Obj) -> str:
    created = parse_time(obj.get("metadata", {}).get("creationTimestamp", ""))
    if created is None:
        return "<unknown>"
    return human_duration((datetime.now(UTC) - created).total_seconds())


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "date":
        when = parse_time(value) if isinstance(value, str) else None
        return human_duration((datetime.now(UTC) - when).total_seconds()) if when else None
    if (
        kind in ("integer", "number")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    ):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    import orjson

    return orjson.dumps(value).decode()


def _event_object(obj: Obj) -> str:
    ref = obj.get("involvedObject") or obj.get("regarding") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


def columns(rt: ResourceType, version: str) -> list[dict[str, Any]]:
    if rt.builtin:
        match rt.key:
            case "/namespaces":
                return [_NAME_COLUMN, _column("Status", "string"), _AGE_COLUMN]
            case "/secrets":
                return [
                    _NAME_COLUMN,
                    _column("Type", "string"),
                    _column("Data", "string"),
                    _AGE_COLUMN,
                ]
            case "/configmaps":
                return [_NAME_COLUMN, _column("Data", "string"), _AGE_COLUMN]
            case "coordination.k8s.io/leases":
                return [_NAME_COLUMN, _column("Holder", "string"), _AGE_COLUMN]
            case "/events" | "events.k8s.io/events":
                return [
                    _column("Last Seen", "string"),
                    _column("Type", "string"),
                    _column("Reason", "string"),
                    _column("Object", "string"),
                    _column("Message", "string"),
                ]
            case _:
                return [_NAME_COLUMN, _column("Created At", "date")]
    custom = rt.printer_columns.get(version) or []
    if not custom:
        return [_NAME_COLUMN, _AGE_COLUMN]
    result = [_NAME_COLUMN]
    for column in custom:
        result.append(
            {
                "name": column.get("name", ""),
                "type": column.get("type", "string"),
                "format": column.get("format", ""),
                "description": column.get("description", ""),
                "priority": int(column.get("priority", 0)),
            }
        )
    return result


def cells(rt: ResourceType, version: str, obj: Obj) -> list[Any]:
    name = obj.get("metadata", {}).get("name")
    if rt.builtin:
        match rt.key:
            case "/namespaces":
                return [name, (obj.get("status") or {}).get("phase", ""), _age(obj)]
            case "/secrets":
                return [name, obj.get("type", ""), len(obj.get("data") or {}), _age(obj)]
            case "/configmaps":
                count = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
                return [name, count, _age(obj)]
            case "coordination.k8s.io/leases":
                return [name, (obj.get("spec") or {}).get("holderIdentity", ""), _age(obj)]
            case "/events" | "events.k8s.io/events":
                last = (
                    obj.get("lastTimestamp")
                    or obj.get("eventTime")
                    or obj.get("metadata", {}).get("creationTimestamp", "")
                )
                when = parse_time(last) if isinstance(last, str) else None
                seen = human_duration((datetime.now(UTC) - when).total_seconds()) if when else ""
                message = obj.get("message") or obj.get("note") or ""
                return [
                    seen,
                    obj.get("type", ""),
                    obj.get("reason", ""),
                    _event_object(obj),
                    message,
                ]
            case _:
                return [name, obj.get("metadata", {}).get("creationTimestamp")]
    custom = rt.printer_columns.get(version) or []
    if not custom:
        return [name, _age(obj)]
    return [name] + [
        _cell(json_path(obj, column.get("jsonPath", "")), column.get("type", "string"))
        for column in custom
    ]


def partial_metadata(obj: Obj, table_version: str) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{table_version}",
        "metadata": obj.get("metadata", {}),
    }


def table(
    rt: ResourceType,
    version: str,
    objects: list[Obj],
    table_version: str,
    include_object: str,
    list_meta: dict[str, Any],
    with_columns: bool = True,
) -> Obj:
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": cells(rt, version, obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial_metadata(obj, table_version)
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{table_version}",
        "metadata": list_meta,
        "columnDefinitions": columns(rt, version) if with_columns else [],
        "rows": rows,
    }
