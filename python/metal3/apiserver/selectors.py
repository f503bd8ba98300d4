"""Label and field selectors as the API server parses them (`labelSelector`, `fieldSelector`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from metal3.apiserver.errors import bad_request

_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    """One clause: `op` is one of =, !=, in, notin, exists, !exists."""

    key: str
    op: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # != and notin also match objects without the label, as upstream does.
        return not present or labels[self.key] not in self.values


def _split_clauses(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


_SET = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)$")
_EQ = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>\S*)$")


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse `a=b,c!=d,e in (f,g),h notin (i),j,!k`; raises 400 on bad syntax."""
    requirements: list[Requirement] = []
    for clause in _split_clauses(text):
        if match := _SET.match(clause):
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            requirements.append(Requirement(match["key"], match["op"], values))
            key, checked = match["key"], values
        elif match := _EQ.match(clause):
            op = "=" if match["op"] in ("=", "==") else "!="
            requirements.append(Requirement(match["key"], op, frozenset([match["value"]])))
            key, checked = match["key"], frozenset([match["value"]])
        elif clause.startswith("!"):
            key, checked = clause[1:].strip(), frozenset()
            requirements.append(Requirement(key, "!exists", frozenset()))
        else:
            key, checked = clause, frozenset()
            requirements.append(Requirement(key, "exists", frozenset()))
        if not _KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
            raise bad_request(f"unable to parse requirement: invalid label key {key!r}")
        for value in checked:
            if len(value) > 63 or not _VALUE.match(value):
                raise bad_request(f"unable to parse requirement: invalid label value {value!r}")
    return requirements


def labels_match(requirements: list[Requirement], obj: Mapping[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(req.matches(labels) for req in requirements)


FieldGetter = Callable[[Mapping[str, Any]], str | None]


def _path_getter(path: str) -> FieldGetter:
    parts = path.split(".")

    def get(obj: Mapping[str, Any]) -> str | None:
        node: Any = obj
        for part in parts:
            if not isinstance(node, Mapping):
                return None
            node = node.get(part)
        if node is None:
            return ""
        if isinstance(node, bool):
            return "true" if node else "false"
        return str(node)

    return get


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    op: str  # "=" or "!="
    value: str
    getter: FieldGetter

    def matches(self, obj: Mapping[str, Any]) -> bool:
        actual = self.getter(obj) or ""
        return (actual == self.value) == (self.op == "=")


def parse_field_selector(text: str, supported: frozenset[str]) -> list[FieldRequirement]:
    """Parse `metadata.name=x,metadata.namespace!=y`; only `supported` fields are accepted."""
    requirements: list[FieldRequirement] = []
    for clause in _split_clauses(text):
        match = _EQ.match(clause)
        if match is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{clause}'")
        field = match["key"]
        if field not in supported:
            raise bad_request(f"field label not supported: {field}")
        op = "=" if match["op"] in ("=", "==") else "!="
        requirements.append(FieldRequirement(field, op, match["value"], _path_getter(field)))
    return requirements


def fields_match(requirements: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all(req.matches(obj) for req in requirements)
