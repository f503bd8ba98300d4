"""OpenAPI v2 and v3 documents built from the served types, so `kubectl explain` and
kubectl's schema checks (client-side validation, server-side field validation support) work."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from metal3.apiserver.registry import Registry, ResourceType

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
OBJECT_META = f"{META}.ObjectMeta"
LIST_META = f"{META}.ListMeta"

_STRING = {"type": "string"}
_OWNER_REFERENCE = {
    "description": "OwnerReference identifies an owning object in the same namespace.",
    "type": "object",
    "required": ["apiVersion", "kind", "name", "uid"],
    "properties": {
        "apiVersion": {"description": "API version of the referent.", "type": "string"},
        "kind": {"description": "Kind of the referent.", "type": "string"},
        "name": {"description": "Name of the referent.", "type": "string"},
        "uid": {"description": "UID of the referent.", "type": "string"},
        "controller": {
            "description": "If true, this reference points to the managing controller.",
            "type": "boolean",
        },
        "blockOwnerDeletion": {
            "description": "If true, the owner cannot be deleted from the "
            "key-value store until this reference is removed.",
            "type": "boolean",
        },
    },
}
_OBJECT_META = {
    "description": "ObjectMeta is metadata that all persisted resources must have.",
    "type": "object",
    "properties": {
        "name": {"description": "Name must be unique within a namespace.", **_STRING},
        "generateName": {
            "description": "Optional prefix used by the server to generate a "
            "unique name when name is not given.",
            **_STRING,
        },
        "namespace": {
            "description": "Namespace defines the space within which each name must be unique.",
            **_STRING,
        },
        "uid": {
            "description": "UID is the unique in time and space value for this object.",
            **_STRING,
        },
        "resourceVersion": {
            "description": "An opaque value that represents the internal version of this object.",
            **_STRING,
        },
        "generation": {
            "description": "A sequence number representing a specific generation "
            "of the desired state.",
            "type": "integer",
            "format": "int64",
        },
        "creationTimestamp": {
            "description": "When this object was created.",
            "type": "string",
            "format": "date-time",
        },
        "deletionTimestamp": {
            "description": "When this object will be deleted.",
            "type": "string",
            "format": "date-time",
        },
        "deletionGracePeriodSeconds": {
            "description": "Seconds allowed for graceful deletion.",
            "type": "integer",
            "format": "int64",
        },
        "labels": {
            "description": "Map of string keys and values used to organize and categorize objects.",
            "type": "object",
            "additionalProperties": _STRING,
        },
        "annotations": {
            "description": "Unstructured key value map stored with a resource.",
            "type": "object",
            "additionalProperties": _STRING,
        },
        "finalizers": {
            "description": "Must be empty before the object is deleted from the registry.",
            "type": "array",
            "items": _STRING,
        },
        "ownerReferences": {
            "description": "List of objects depended by this object.",
            "type": "array",
            "items": {"$ref": "REF:OwnerReference"},
        },
        "managedFields": {
            "description": "Field ownership (not tracked by this server).",
            "type": "array",
            "items": {"type": "object"},
        },
    },
}
_LIST_META = {
    "description": "ListMeta describes metadata that synthetic resources must have.",
    "type": "object",
    "properties": {
        "resourceVersion": {"description": "Version of the list.", **_STRING},
        "continue": {"description": "Token for the next page.", **_STRING},
        "remainingItemCount": {
            "description": "Items left after this page.",
            "type": "integer",
            "format": "int64",
        },
    },
}

_KEEP_V2 = {
    "description",
    "type",
    "format",
    "properties",
    "items",
    "required",
    "enum",
    "additionalProperties",
    "title",
    "maximum",
    "minimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "exclusiveMaximum",
    "exclusiveMinimum",
}


def _definition_name(group: str, version: str, kind: str) -> str:
    if not group:
        return f"io.k8s.api.core.{version}.{kind}"
    parts = group.split(".")
    return ".".join(reversed(parts)) + f".{version}.{kind}"


def _to_v2(schema: Any) -> Any:
    """Strip what OpenAPI v2 cannot say, as kube-apiserver does for published CRD schemas, so
    that clients validating against v2 (kubectl 1.20) accept what the server accepts: a node
    that keeps unknown fields loses its properties, a nullable or int-or-string node its type."""
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            if not preserve:
                result[key] = {k: _to_v2(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            if not preserve:
                result[key] = _to_v2(value)
        elif key in _KEEP_V2 or key.startswith("x-kubernetes-"):
            result[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result["format"] = "int-or-string"
    if schema.get("nullable"):
        for key in ("type", "properties", "items", "additionalProperties", "required", "enum"):
            result.pop(key, None)
    return result


def _kind_schema(rt: ResourceType, version: str, ref_prefix: str, v2: bool) -> dict[str, Any]:
    schema = rt.schemas.get(version) or {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    body: dict[str, Any] = _to_v2(schema) if v2 else orjson.loads(orjson.dumps(schema))
    body.setdefault("type", "object")
    gvk = [{"group": rt.group, "kind": rt.kind, "version": version}]
    if v2 and schema.get("x-kubernetes-preserve-unknown-fields"):
        body["x-kubernetes-group-version-kind"] = gvk  # any field goes: nothing to check
        return body
    properties = body.setdefault("properties", {})
    properties["apiVersion"] = {
        "description": "APIVersion defines the versioned schema of "
        "this representation of an object.",
        "type": "string",
    }
    properties["kind"] = {
        "description": "Kind is a string value representing the REST "
        "resource this object represents.",
        "type": "string",
    }
    properties["metadata"] = {"$ref": f"{ref_prefix}{OBJECT_META}"}
    if not v2:
        properties["metadata"] = {"allOf": [{"$ref": f"{ref_prefix}{OBJECT_META}"}], "default": {}}
    body["x-kubernetes-group-version-kind"] = gvk
    return body


def _list_schema(rt: ResourceType, version: str, ref_prefix: str) -> dict[str, Any]:
    return {
        "description": f"{rt.list_kind} is a list of {rt.kind}",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "items": {
                "type": "array",
                "items": {"$ref": ref_prefix + _definition_name(rt.group, version, rt.kind)},
            },
            "metadata": {"$ref": f"{ref_prefix}{LIST_META}"},
        },
        "x-kubernetes-group-version-kind": [
            {"group": rt.group, "kind": rt.list_kind, "version": version}
        ],
    }


def _meta_definitions(ref_prefix: str) -> dict[str, Any]:
    meta = orjson.loads(
        orjson.dumps(_OBJECT_META).replace(b"REF:", ref_prefix.encode() + f"{META}.".encode())
    )
    return {OBJECT_META: meta, LIST_META: _LIST_META, f"{META}.OwnerReference": _OWNER_REFERENCE}


_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "pretty")


def _paths(rt: ResourceType, version: str, ref_prefix: str, v3: bool) -> dict[str, Any]:
    gvk = {"group": rt.group, "version": version, "kind": rt.kind}
    root = f"/apis/{rt.group}/{version}" if rt.group else f"/api/{version}"
    base = (
        f"{root}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{root}/{rt.plural}"
    )
    ref = {"$ref": ref_prefix + _definition_name(rt.group, version, rt.kind)}
    if v3:
        params: list[dict[str, Any]] = [
            {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for n in _QUERY_PARAMS
        ]
        response: dict[str, Any] = {
            "200": {"description": "OK", "content": {"application/json": {"schema": ref}}}
        }
    else:
        params = [
            {"name": n, "in": "query", "type": "string", "uniqueItems": True} for n in _QUERY_PARAMS
        ]
        response = {"200": {"description": "OK", "schema": ref}}

    def operation(action: str) -> dict[str, Any]:
        op: dict[str, Any] = {
            "operationId": f"{action}{rt.kind}",
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "responses": response,
        }
        if action in ("post", "put", "patch"):
            op["parameters"] = params
        return op

    return {
        base: {"get": operation("list"), "post": operation("post")},
        f"{base}/{{name}}": {
            "get": operation("get"),
            "put": operation("put"),
            "patch": operation("patch"),
            "delete": operation("delete"),
        },
    }


def openapi_v2(registry: Registry) -> dict[str, Any]:
    prefix = "#/definitions/"
    definitions: dict[str, Any] = _meta_definitions(prefix)
    paths: dict[str, Any] = {}
    for rt in registry.types():
        for version in rt.versions:
            if rt.builtin and rt.key != "apiextensions.k8s.io/customresourcedefinitions":
                continue
            definitions[_definition_name(rt.group, version, rt.kind)] = _kind_schema(
                rt, version, prefix, v2=True
            )
            definitions[_definition_name(rt.group, version, rt.list_kind)] = _list_schema(
                rt, version, prefix
            )
            paths.update(_paths(rt, version, prefix, v3=False))
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.30.0+metal3"},
        "paths": paths,
        "definitions": definitions,
    }


def _group_version_path(rt: ResourceType, version: str) -> str:
    return f"apis/{rt.group}/{version}" if rt.group else f"api/{version}"


def openapi_v3_documents(registry: Registry) -> dict[str, dict[str, Any]]:
    """One OpenAPI 3.0 document per group-version path (`apis/metal3.io/v1alpha1`)."""
    prefix = "#/components/schemas/"
    documents: dict[str, dict[str, Any]] = {}
    for rt in registry.types():
        for version in rt.versions:
            path = _group_version_path(rt, version)
            doc = documents.setdefault(
                path,
                {
                    "openapi": "3.0.0",
                    "info": {"title": "Kubernetes", "version": "v1.30.0+metal3"},
                    "paths": {},
                    "components": {"schemas": _meta_definitions(prefix)},
                },
            )
            schemas = doc["components"]["schemas"]
            if not rt.builtin or rt.key == "apiextensions.k8s.io/customresourcedefinitions":
                schemas[_definition_name(rt.group, version, rt.kind)] = _kind_schema(
                    rt, version, prefix, v2=False
                )
                schemas[_definition_name(rt.group, version, rt.list_kind)] = _list_schema(
                    rt, version, prefix
                )
            else:
                schemas[_definition_name(rt.group, version, rt.kind)] = _kind_schema(
                    rt, version, prefix, v2=False
                )
            doc["paths"].update(_paths(rt, version, prefix, v3=True))
    return documents


def openapi_v3_root(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    paths = {}
    for path, doc in sorted(documents.items()):
        digest = hashlib.sha512(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:128]
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest.upper()}"}
    return {"paths": paths}
