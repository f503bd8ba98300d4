"""Patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes
strategic merge patch for the built-in kinds (the algorithm is in `strategic_merge`, the
kinds' merge keys in `patch_meta`)."""

from __future__ import annotations

import copy
from typing import Any

from metal3.apiserver import strategic_merge
from metal3.apiserver.errors import ApiError, bad_request
from metal3.apiserver.patch_meta import Fields, fields_for


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, fields: Fields | None = None) -> Any:
    """Kubernetes strategic merge patch of a built-in object. `fields` is the kind's patch
    metadata; by default it is looked up from the target's `apiVersion` and `kind`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    if fields is None:
        fields = fields_for(target.get("apiVersion"), target.get("kind"))
    return strategic_merge.apply(target, patch, fields)


class PatchTestFailedError(ApiError):
    """A JSON patch `test` operation did not hold (422, as upstream)."""

    def __init__(self, message: str) -> None:
        super().__init__(422, message, "Invalid")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [_unescape(token) for token in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise bad_request(f"invalid array index {token!r}")
    index = int(token)
    limit = len(container) + (1 if allow_end else 0)
    if index >= limit:
        raise ApiError(422, f"array index {index} out of bounds", "Invalid")
    return index


def _parent(doc: Any, tokens: list[str], op: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise ApiError(422, f"{op}: path component {token!r} does not exist", "Invalid")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, allow_end=False)]
        else:
            raise ApiError(422, f"{op}: cannot descend into a scalar at {token!r}", "Invalid")
    return node


def _get(doc: Any, tokens: list[str], op: str) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens, op)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise ApiError(422, f"{op}: missing value at path {'/'.join(tokens)!r}", "Invalid")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, allow_end=False)]
    raise ApiError(422, f"{op}: path does not exist", "Invalid")


def _remove(doc: Any, tokens: list[str], op: str) -> Any:
    parent = _parent(doc, tokens, op)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise ApiError(422, f"{op}: missing value at path {'/'.join(tokens)!r}", "Invalid")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, allow_end=False))
    raise ApiError(422, f"{op}: path does not exist", "Invalid")


def _add(doc: Any, tokens: list[str], value: Any, op: str) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens, op)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise ApiError(422, f"{op}: cannot add to a scalar", "Invalid")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 on a deep copy of `target`; a failed `test` raises 422."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation:
            raise bad_request("json patch operation must be an object with 'op'")
        op = operation["op"]
        path = operation.get("path")
        if not isinstance(path, str):
            raise bad_request(f"json patch operation {op!r} needs a string 'path'")
        tokens = _pointer(path)
        if op == "add":
            doc = _add(doc, tokens, copy.deepcopy(_value(operation)), op)
        elif op == "remove":
            _remove(doc, tokens, op)
        elif op == "replace":
            _get(doc, tokens, op)
            if tokens:
                _remove(doc, tokens, op)
            doc = _add(doc, tokens, copy.deepcopy(_value(operation)), op)
        elif op in ("move", "copy"):
            source = operation.get("from")
            if not isinstance(source, str):
                raise bad_request(f"json patch operation {op!r} needs a string 'from'")
            from_tokens = _pointer(source)
            if op == "move":
                value = _remove(doc, from_tokens, op)
            else:
                value = copy.deepcopy(_get(doc, from_tokens, op))
            doc = _add(doc, tokens, value, op)
        elif op == "test":
            actual = _get(doc, tokens, op)
            expected = _value(operation)
            if not _json_equal(actual, expected):
                raise PatchTestFailedError(
                    f"the server rejected our request due to an error in our request: "
                    f"testing value {path} failed"
                )
        else:
            raise bad_request(f"unknown json patch operation {op!r}")
    return doc


def _value(operation: dict[str, Any]) -> Any:
    if "value" not in operation:
        raise bad_request(f"json patch operation {operation['op']!r} needs a 'value'")
    return operation["value"]


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)
