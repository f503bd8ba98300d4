"""Label selector matching as HostClaims and Metal3Machines write it (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from metal3.claims.selector import SelectorError, matches, validate

LABELS = {"profile": "compute", "rack": "r1", "cpus": "8"}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),
        ({"matchLabels": {"profile": "compute"}}, True),
        ({"matchLabels": {"profile": "compute", "rack": "r2"}}, False),
        ({"matchLabels": {"missing": ""}}, False),
        (expr("rack", "In", "r1", "r2"), True),
        (expr("rack", "In", "r3"), False),
        (expr("rack", "in", "r1"), True),
        (expr("rack", "=", "r1"), True),
        (expr("rack", "==", "r2"), False),
        (expr("rack", "NotIn", "r2"), True),
        (expr("rack", "notin", "r1"), False),
        (expr("absent", "NotIn", "x"), True),
        (expr("rack", "!=", "r1"), False),
        (expr("rack", "Exists"), True),
        (expr("absent", "exists"), False),
        (expr("absent", "DoesNotExist"), True),
        (expr("rack", "!"), False),
        (expr("cpus", "gt", "4"), True),
        (expr("cpus", "Lt", "4"), False),
        (expr("rack", "gt", "4"), False),  # not an integer: no match, as Kubernetes does
    ],
)
def test_matches(selector: dict[str, Any], expected: bool) -> None:
    assert matches(selector, LABELS) is expected


def test_labels_and_expressions_must_all_hold() -> None:
    selector = {"matchLabels": {"profile": "compute"}, **expr("rack", "In", "r2")}
    assert not matches(selector, LABELS)
    assert matches(selector, {**LABELS, "rack": "r2"})


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (expr("rack", "Like", "r1"), "unknown operator 'Like'"),
        (expr("rack", "In"), "needs at least one value"),
        (expr("rack", "Exists", "r1"), "takes no values"),
        (expr("rack", "==", "a", "b"), "exactly one value"),
        (expr("cpus", "gt", "many"), "one integer value"),
        (expr("", "Exists"), "key must be"),
        ({"matchLabels": {"a": 1}}, "matchLabels"),
        ({"matchExpressions": {"key": "a"}}, "must be a list"),
    ],
)
def test_invalid_selectors_are_errors(selector: dict[str, Any], message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        validate(selector)
    with pytest.raises(SelectorError):
        matches(selector, LABELS)
