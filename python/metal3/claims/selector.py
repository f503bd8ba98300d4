"""Label selectors as claims write them: does a host's label set satisfy a hostSelector?

Both spellings of an expression's operator are accepted: the LabelSelector ones
(``In``, ``NotIn``, ``Exists``, ``DoesNotExist``) and the ``selection.Operator`` ones upstream's
HostClaim and CAPM3's Metal3Machine declare (``in``, ``notin``, ``exists``, ``!``, ``=``, ``==``,
``!=``, ``gt``, ``lt``). Anything else is a :class:`SelectorError`, never a silent non-match, so
a typo in a claim is reported instead of leaving it waiting for ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SelectorError(ValueError):
    """A selector that cannot be evaluated (unknown operator, wrong value count or type)."""


_IN = frozenset({"In", "in", "=", "=="})
_NOT_IN = frozenset({"NotIn", "notin", "!="})
_EXISTS = frozenset({"Exists", "exists"})
_DOES_NOT_EXIST = frozenset({"DoesNotExist", "!"})
_ORDER = frozenset({"Gt", "gt", "Lt", "lt"})
OPERATORS = tuple(sorted(_IN | _NOT_IN | _EXISTS | _DOES_NOT_EXIST | _ORDER))


def validate(selector: Mapping[str, Any] | None) -> None:
    """Raise :class:`SelectorError` unless every part of ``selector`` can be evaluated."""
    if not selector:
        return
    labels = selector.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise SelectorError("matchLabels must map label names to string values")
    expressions = selector.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SelectorError("matchExpressions must be a list")
    for index, expression in enumerate(expressions):
        _check_expression(index, expression)


def _check_expression(index: int, expression: Any) -> None:
    where = f"matchExpressions[{index}]"
    if not isinstance(expression, Mapping):
        raise SelectorError(f"{where} must be an object")
    key, operator = expression.get("key"), expression.get("operator")
    values = expression.get("values") or []
    if not isinstance(key, str) or not key:
        raise SelectorError(f"{where}: key must be a non-empty string")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SelectorError(f"{where}: values must be a list of strings")
    if operator in _IN or operator in _NOT_IN:
        if not values:
            raise SelectorError(f"{where}: operator {operator!r} needs at least one value")
        if operator in ("=", "==", "!=") and len(values) != 1:
            raise SelectorError(f"{where}: operator {operator!r} takes exactly one value")
    elif operator in _EXISTS or operator in _DOES_NOT_EXIST:
        if values:
            raise SelectorError(f"{where}: operator {operator!r} takes no values")
    elif operator in _ORDER:
        if len(values) != 1 or not _is_int(values[0]):
            raise SelectorError(f"{where}: operator {operator!r} takes one integer value")
    else:
        raise SelectorError(
            f"{where}: unknown operator {operator!r}; use one of {', '.join(OPERATORS)}"
        )


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """Whether ``labels`` satisfy ``selector``; an empty or absent selector matches everything.

    Raises :class:`SelectorError` for a selector :func:`validate` refuses.
    """
    validate(selector)
    if not selector:
        return True
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(
        _expression_holds(expression, labels)
        for expression in selector.get("matchExpressions") or []
    )


def _expression_holds(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key: str = expression["key"]
    operator: str = expression["operator"]
    values: list[str] = expression.get("values") or []
    present = key in labels
    if operator in _IN:
        return present and labels[key] in values
    if operator in _NOT_IN:
        return not present or labels[key] not in values
    if operator in _EXISTS:
        return present
    if operator in _DOES_NOT_EXIST:
        return not present
    # Gt / Lt: as Kubernetes does, a label that is absent or not an integer does not match.
    if not present or not _is_int(labels[key]):
        return False
    actual, bound = int(labels[key]), int(values[0])
    return actual > bound if operator in ("Gt", "gt") else actual < bound
