"""Patch metadata of the built-in kinds: which fields a strategic merge patch merges as lists,
and by which key. These are facts of the upstream Go types (their `patchStrategy` and
`patchMergeKey` struct tags); a field not listed here has no tag, so its lists are replaced
whole and its maps merge key by key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias


@dataclass(frozen=True)
class FieldMeta:
    """One field's strategy: `merge` for `patchStrategy:"merge"` lists (a set when the items
    are scalars, keyed by `merge_key` when they are objects); `fields` describes the object
    the field holds (or each item of a list of objects)."""

    merge: bool = False
    merge_key: str = ""
    fields: Mapping[str, FieldMeta] = field(default_factory=dict)


Fields: TypeAlias = Mapping[str, FieldMeta]

PLAIN = FieldMeta()

# k8s.io/apimachinery/pkg/apis/meta/v1 ObjectMeta: `finalizers` is a merged set of strings and
# `ownerReferences` merge by `uid`; `managedFields` (and every other list) has no tag.
OBJECT_META: Fields = {
    "finalizers": FieldMeta(merge=True),
    "ownerReferences": FieldMeta(merge=True, merge_key="uid"),
}

_WITH_METADATA: Fields = {"metadata": FieldMeta(fields=OBJECT_META)}

# core/v1 Namespace: `status.conditions` merge by `type`. `spec.finalizers` has no patch tag
# upstream (`+listType=atomic`), so a strategic patch replaces it whole.
_NAMESPACE: Fields = {
    **_WITH_METADATA,
    "status": FieldMeta(fields={"conditions": FieldMeta(merge=True, merge_key="type")}),
}

# (group, kind) -> fields. Secret, ConfigMap, both Events, Lease and the CRD kind itself hold
# no tagged list outside their metadata.
BUILTIN: Mapping[tuple[str, str], Fields] = {
    ("", "Namespace"): _NAMESPACE,
    ("", "Secret"): _WITH_METADATA,
    ("", "ConfigMap"): _WITH_METADATA,
    ("", "Event"): _WITH_METADATA,
    ("events.k8s.io", "Event"): _WITH_METADATA,
    ("coordination.k8s.io", "Lease"): _WITH_METADATA,
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _WITH_METADATA,
}


def fields_for(api_version: object, kind: object) -> Fields:
    """The patch metadata of a built-in kind named by `apiVersion` and `kind`; any other kind
    gets only ObjectMeta's, which every served object has."""
    group = api_version.rpartition("/")[0] if isinstance(api_version, str) else ""
    return BUILTIN.get((group, kind if isinstance(kind, str) else ""), _WITH_METADATA)
