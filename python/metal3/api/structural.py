"""Validation, defaulting and pruning of objects against a CRD's structural OpenAPI v3 schema.

These follow what kube-apiserver does with a custom resource on write: unknown fields are pruned
(unless ``x-kubernetes-preserve-unknown-fields``), ``null`` in a non-nullable field is dropped,
missing fields with a ``default`` are filled in, and then the object is validated (types, enums,
patterns, formats, bounds, required). Errors carry the JSON path and the reason Kubernetes uses
in a ``Status``'s ``details.causes``, with messages shaped like the real API server's.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from metal3.api.model import json_type_name

Schema = dict[str, Any]

# Root fields every object has; the API server handles `metadata` itself.
_ROOT_FIELDS = ("apiVersion", "kind", "metadata")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class FieldError:
    """One invalid field: where, why (a Kubernetes cause reason), and a readable message."""

    path: str
    reason: str  # FieldValueRequired, FieldValueInvalid, FieldValueNotSupported, ...
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _render(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, str) else f'"{value}"'


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- pruning -----------------------------------------------------------------------------------


def prune(obj: dict[str, Any], schema: Schema) -> list[str]:
    """Drop fields the schema does not know, in place; returns the pruned paths."""
    pruned: list[str] = []
    _prune(obj, schema, "", pruned, root=True)
    return pruned


def _prune(value: Any, schema: Schema, path: str, pruned: list[str], root: bool = False) -> None:
    if isinstance(value, dict):
        properties: Schema | None = schema.get("properties")
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        for key in list(value):
            if root and key in _ROOT_FIELDS:
                if key != "metadata" and properties and key in properties:
                    _prune(value[key], properties[key], key, pruned)
                continue
            if properties is not None and key in properties:
                _prune(value[key], properties[key], _join(path, key), pruned)
            elif isinstance(additional, dict):
                _prune(value[key], additional, _join(path, key), pruned)
            elif not preserve and additional is not True:
                pruned.append(_join(path, key))
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _prune(item, schema["items"], f"{path}[{i}]", pruned)


# --- defaulting --------------------------------------------------------------------------------


def apply_defaults(obj: dict[str, Any], schema: Schema) -> None:
    """Fill in defaults and drop nulls of non-nullable fields, in place."""
    _default(obj, schema)


def _default(value: Any, schema: Schema) -> None:
    if isinstance(value, dict):
        properties: Schema = schema.get("properties") or {}
        for key, sub in properties.items():
            if key in value and value[key] is None and not sub.get("nullable"):
                del value[key]
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key, item in value.items():
                if key not in properties:
                    _default(item, additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(item, schema["items"])


# --- validation --------------------------------------------------------------------------------


def validate(obj: Any, schema: Schema) -> list[FieldError]:
    """Every way ``obj`` breaks ``schema`` (empty when it is valid)."""
    errors: list[FieldError] = []
    _validate(obj, schema, "", errors, root=True)
    return errors


def _validate(
    value: Any, schema: Schema, path: str, errors: list[FieldError], root: bool = False
) -> None:
    if value is None:
        if not schema.get("nullable"):
            errors.append(
                FieldError(
                    path,
                    "FieldValueTypeInvalid",
                    f"Invalid value: null: {path} in body "
                    f'must be of type {schema.get("type", "object")}: "null"',
                )
            )
        return
    if schema.get("x-kubernetes-int-or-string") and (
        isinstance(value, bool) or not isinstance(value, int | str)
    ):
        errors.append(_type_error(path, value, "integer or string"))
        return
    expected = schema.get("type")
    if expected and not _has_type(value, expected):
        errors.append(_type_error(path, value, expected))
        return
    _check_enum(value, schema, path, errors)
    if isinstance(value, str):
        _check_string(value, schema, path, errors)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, schema, path, errors)
    elif isinstance(value, list):
        _check_array(value, schema, path, errors)
    elif isinstance(value, dict):
        _check_object(value, schema, path, errors, root)


def _has_type(value: Any, expected: str) -> bool:
    match expected:
        case "string":
            return isinstance(value, str)
        case "boolean":
            return isinstance(value, bool)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "array":
            return isinstance(value, list)
        case "object":
            return isinstance(value, dict)
    return True


def _type_error(path: str, value: Any, expected: str) -> FieldError:
    return FieldError(
        path,
        "FieldValueTypeInvalid",
        f"Invalid value: {_render(value)}: {path} in body must be of type {expected}: "
        f'"{json_type_name(value)}"',
    )


def _invalid(path: str, value: Any, rule: str) -> FieldError:
    """A FieldValueInvalid error in kube-apiserver's wording: the value, the path, the rule."""
    return FieldError(
        path, "FieldValueInvalid", f"Invalid value: {_render(value)}: {path} in body {rule}"
    )


def _check_enum(value: Any, schema: Schema, path: str, errors: list[FieldError]) -> None:
    enum = schema.get("enum")
    if enum is not None and value not in enum:
        supported = ", ".join(_render(v) for v in enum)
        errors.append(
            FieldError(
                path,
                "FieldValueNotSupported",
                f"Unsupported value: {_render(value)}: supported values: {supported}",
            )
        )


def _check_string(value: str, schema: Schema, path: str, errors: list[FieldError]) -> None:
    pattern = schema.get("pattern")
    if pattern is not None and not _compiled(pattern).search(value):
        errors.append(_invalid(path, value, f"should match '{pattern}'"))
    max_length = schema.get("maxLength")
    if max_length is not None and len(value) > max_length:
        errors.append(
            FieldError(
                path,
                "FieldValueTooLong",
                f"Too long: may not be longer than {max_length}",
            )
        )
    min_length = schema.get("minLength")
    if min_length is not None and len(value) < min_length:
        errors.append(_invalid(path, value, f"should be at least {min_length} chars long"))
    if schema.get("format") == "date-time" and not _DATE_TIME.match(value):
        errors.append(_invalid(path, value, "must be of type date-time"))


def _check_number(value: float, schema: Schema, path: str, errors: list[FieldError]) -> None:
    minimum = schema.get("minimum")
    if minimum is not None and value < minimum:
        errors.append(_invalid(path, value, f"should be greater than or equal to {minimum}"))
    maximum = schema.get("maximum")
    if maximum is not None and value > maximum:
        errors.append(_invalid(path, value, f"should be less than or equal to {maximum}"))
    if schema.get("format") == "int32" and not _INT32[0] <= value <= _INT32[1]:
        errors.append(
            FieldError(path, "FieldValueInvalid", f"Invalid value: {value}: out of int32 range")
        )


def _check_array(value: list[Any], schema: Schema, path: str, errors: list[FieldError]) -> None:
    max_items = schema.get("maxItems")
    if max_items is not None and len(value) > max_items:
        errors.append(
            FieldError(
                path,
                "FieldValueTooMany",
                f"Too many: {len(value)}: must have at most {max_items} items",
            )
        )
    min_items = schema.get("minItems")
    if min_items is not None and len(value) < min_items:
        errors.append(
            FieldError(
                path,
                "FieldValueInvalid",
                f"Invalid value: {len(value)}: {path} in body "
                f"should have at least {min_items} items",
            )
        )
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _validate(item, items, f"{path}[{i}]", errors)


def _check_object(
    value: dict[str, Any], schema: Schema, path: str, errors: list[FieldError], root: bool
) -> None:
    for key in schema.get("required") or ():
        if key not in value:
            errors.append(FieldError(_join(path, key), "FieldValueRequired", "Required value"))
    properties: Schema = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        if root and key == "metadata":
            continue
        sub = properties.get(key)
        if sub is None and isinstance(additional, dict):
            sub = additional
        if sub is not None:
            _validate(item, sub, _join(path, key), errors)


def admit(obj: dict[str, Any], schema: Schema) -> tuple[list[str], list[FieldError]]:
    """What the API server does to a custom resource on write: prune, default, validate.

    Changes ``obj`` in place; returns the pruned paths and the validation errors.
    """
    pruned = prune(obj, schema)
    apply_defaults(obj, schema)
    return pruned, validate(obj, schema)
