"""The resource types served: built-in kinds plus every kind a stored CRD defines. Each type
carries its strategy (`strategies`), so a kind is added by adding its one entry here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metal3.apiserver.errors import ApiError
from metal3.apiserver.strategies import (
    ConfigMapStrategy,
    CustomResourceDefinitionStrategy,
    CustomResourceStrategy,
    EventStrategy,
    NamespaceStrategy,
    SecretStrategy,
    Strategy,
)

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One REST resource (`group`/`plural`) with its versions and behaviour."""

    group: str
    versions: tuple[str, ...]  # served, preferred (storage) first
    storage_version: str
    plural: str
    singular: str
    kind: str
    list_kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    builtin: bool = True
    # Per version: OpenAPI v3 schema (CRDs) and additionalPrinterColumns.
    schemas: Mapping[str, Any] = field(default_factory=dict)
    printer_columns: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    field_selectors: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})
    # Whether PUT without metadata.resourceVersion is allowed (true for most built-ins).
    unconditional_update: bool = True
    has_generation: bool = False
    # What this kind does differently on create, update and delete.
    strategy: Strategy = field(default_factory=Strategy, compare=False)

    @property
    def key(self) -> str:
        """Storage key prefix: one per group/resource, whatever the version."""
        return f"{self.group}/{self.plural}"

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


_EVENT_FIELDS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)

BUILTINS: tuple[ResourceType, ...] = (
    ResourceType(
        "",
        ("v1",),
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        "NamespaceList",
        False,
        short_names=("ns",),
        field_selectors=frozenset({"metadata.name", "status.phase"}),
        strategy=NamespaceStrategy(),
    ),
    ResourceType(
        "",
        ("v1",),
        "v1",
        "secrets",
        "secret",
        "Secret",
        "SecretList",
        True,
        field_selectors=frozenset({"metadata.name", "metadata.namespace", "type"}),
        strategy=SecretStrategy(),
    ),
    ResourceType(
        "",
        ("v1",),
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        "ConfigMapList",
        True,
        short_names=("cm",),
        strategy=ConfigMapStrategy(),
    ),
    ResourceType(
        "",
        ("v1",),
        "v1",
        "events",
        "event",
        "Event",
        "EventList",
        True,
        short_names=("ev",),
        field_selectors=_EVENT_FIELDS,
        strategy=EventStrategy(),
    ),
    ResourceType(
        "events.k8s.io",
        ("v1",),
        "v1",
        "events",
        "event",
        "Event",
        "EventList",
        True,
        short_names=("ev",),
        field_selectors=frozenset(
            {
                "metadata.name",
                "metadata.namespace",
                "reason",
                "type",
                "regarding.kind",
                "regarding.name",
                "regarding.namespace",
                "regarding.uid",
                "reportingController",
            }
        ),
        strategy=EventStrategy(),
    ),
    ResourceType(
        "coordination.k8s.io",
        ("v1",),
        "v1",
        "leases",
        "lease",
        "Lease",
        "LeaseList",
        True,
    ),
    ResourceType(
        "apiextensions.k8s.io",
        ("v1",),
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        "CustomResourceDefinitionList",
        False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        status_subresource=True,
        has_generation=True,
        strategy=CustomResourceDefinitionStrategy(),
    ),
)


_CUSTOM_RESOURCES = CustomResourceStrategy()


def resource_type_from_crd(crd: Mapping[str, Any]) -> ResourceType | None:
    """The served type a CRD declares, or None when it serves no version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    versions = [v for v in spec.get("versions") or [] if v.get("served")]
    if not versions or not names.get("plural") or not names.get("kind"):
        return None
    storage = next((v["name"] for v in spec["versions"] if v.get("storage")), versions[0]["name"])
    ordered = sorted(versions, key=lambda v: (v["name"] != storage, v["name"]))
    status = any("status" in ((v.get("subresources") or {}) or {}) for v in versions)
    return ResourceType(
        group=spec.get("group", ""),
        versions=tuple(v["name"] for v in ordered),
        storage_version=storage,
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        list_kind=names.get("listKind") or names["kind"] + "List",
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        status_subresource=status,
        builtin=False,
        schemas={v["name"]: (v.get("schema") or {}).get("openAPIV3Schema") for v in versions},
        printer_columns={
            v["name"]: list(v.get("additionalPrinterColumns") or []) for v in versions
        },
        unconditional_update=False,
        has_generation=True,
        strategy=_CUSTOM_RESOURCES,
    )


class Registry:
    """Lookup of served types by group/version/plural; rebuilt whenever a CRD changes."""

    def __init__(self, builtins: Sequence[ResourceType] = BUILTINS) -> None:
        self._builtins = tuple(builtins)
        self._by_key: dict[str, ResourceType] = {}
        self.rebuild(())

    def rebuild(self, crds: Iterable[Mapping[str, Any]]) -> None:
        """Serve the built-in kinds and those the CRDs define (a CRD cannot replace a
        built-in kind)."""
        by_key = {rt.key: rt for rt in self._builtins}
        for crd in crds:
            rt = resource_type_from_crd(crd)
            if rt is not None and rt.key not in by_key:
                by_key[rt.key] = rt
        self._by_key = by_key

    def types(self) -> list[ResourceType]:
        return list(self._by_key.values())

    def by_key(self, key: str) -> ResourceType | None:
        return self._by_key.get(key)

    def lookup(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self._by_key.get(f"{group}/{plural}")
        if rt is None or version not in rt.versions:
            where = f"{group}/{version}" if group else version
            raise ApiError(
                404, f"the server could not find the requested resource ({where} {plural})"
            )
        return rt

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self._by_key.values():
            if rt.group == group and rt.kind == kind and version in rt.versions:
                return rt
        return None

    def group_versions(self) -> dict[str, list[str]]:
        """group -> served versions, preferred first."""
        result: dict[str, list[str]] = {}
        for rt in self._by_key.values():
            versions = result.setdefault(rt.group, [])
            for version in rt.versions:
                if version not in versions:
                    versions.append(version)
        return result
