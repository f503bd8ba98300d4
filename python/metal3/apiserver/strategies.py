"""What each kind does differently, one strategy object per kind (as kube-apiserver's registry
gives each resource a create/update/delete strategy): defaulting, validation, who owns the
status, and the finalizers the server itself runs. The generic code in `core` and `deletion`
asks the strategy instead of testing which kind it handles (only whether a strategic merge
patch applies still follows `ResourceType.builtin`: upstream, only compiled-in types have the
patch metadata it needs).

`Strategy` is the behaviour of a plain kind (leases, for instance); the built-in kinds that
differ and the custom resources subclass it, overriding only what differs.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from metal3.api import structural
from metal3.apiserver.errors import Cause, bad_request
from metal3.apiserver.objects import deep_copy, now, parse_time

if TYPE_CHECKING:
    from metal3.apiserver.core import WriteOptions
    from metal3.apiserver.deletion import Deleter
    from metal3.apiserver.registry import Registry, ResourceType
    from metal3.apiserver.store import Obj, Store

CRD_KEY = "apiextensions.k8s.io/customresourcedefinitions"
NAMESPACE_KEY = "/namespaces"
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"
NAMESPACE_FINALIZER = "kubernetes"

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class Strategy:
    """The behaviour of a kind with no rules of its own; every hook is a no-op or the
    generic rule, so a subclass overrides only what its kind does differently."""

    # Object names must be DNS labels (63 characters, no dots) rather than subdomains.
    names_are_labels = False
    # Objects are deleted once not written for the server's TTL (Events, --event-ttl).
    expires = False

    # -- create and update -------------------------------------------------------------------

    def prepare_for_create(self, rt: ResourceType, obj: Obj) -> None:
        """Clears what a client may not set on create: the status, when /status owns it."""
        if rt.status_subresource:
            obj.pop("status", None)

    def prepare_for_update(self, rt: ResourceType, new: Obj, old: Obj) -> None:
        """For an update of the main resource: keeps the stored status when /status owns it."""
        if rt.status_subresource:
            if "status" in old:
                new["status"] = deep_copy(old["status"])
            else:
                new.pop("status", None)

    def admit(
        self, rt: ResourceType, version: str, obj: Obj, opts: WriteOptions, status_only: bool
    ) -> list[Cause]:
        """Kind-specific defaulting and validation of an object about to be written (after
        the generic metadata checks); returns why it is invalid. `status_only` marks a write
        to /status, which changes nothing but the status."""
        return []

    def validate_update(self, rt: ResourceType, new: Obj, old: Obj) -> list[Cause]:
        """Rules on the change itself (immutable fields); returns why it is refused."""
        return []

    def after_write(self, rt: ResourceType, store: Store, registry: Registry) -> None:
        """Runs after an object of this kind is created, updated or removed."""

    # -- deletion ----------------------------------------------------------------------------

    def deletion_finalizers(self, obj: Obj) -> tuple[str, ...]:
        """Finalizers the server adds when deletion of an object starts."""
        return ()

    def held(self, obj: Obj) -> bool:
        """Whether something other than metadata.finalizers keeps a deleted object."""
        return False

    def prepare_for_delete(self, obj: Obj) -> None:
        """Marks an object whose graceful deletion starts (beyond deletionTimestamp)."""

    def finalize(self, deleter: Deleter, rt: ResourceType, obj: Obj) -> None:
        """Does the work of the finalizers the server runs itself for a deleted object."""

    def holders(self, rt: ResourceType, obj: Obj) -> list[tuple[str, str]]:
        """The cluster-scoped objects (type key, name) whose deletion may be waiting for
        this object to go: its namespace."""
        return [(NAMESPACE_KEY, obj["metadata"].get("namespace", ""))] if rt.namespaced else []

    def release(self, deleter: Deleter, rt: ResourceType, name: str) -> None:
        """Called when something this object holds went away: finish a deletion that waited
        for it, if nothing else remains."""

    def last_write(self, obj: Obj) -> datetime | None:
        """When an expiring object was last written (see `expires`)."""
        return None


def _keep_status(new: Obj, old: Obj) -> None:
    """The status is the server's: an update of the object keeps the stored one."""
    new["status"] = deep_copy(old.get("status") or {})


class NamespaceStrategy(Strategy):
    """Namespaces: a DNS label name, status set by the server, and deletion that first
    deletes everything in the namespace (held by spec.finalizers until it is empty)."""

    names_are_labels = True

    def prepare_for_create(self, rt: ResourceType, obj: Obj) -> None:
        pass  # the status phase is defaulted by admission

    def prepare_for_update(self, rt: ResourceType, new: Obj, old: Obj) -> None:
        _keep_status(new, old)

    def admit(
        self, rt: ResourceType, version: str, obj: Obj, opts: WriteOptions, status_only: bool
    ) -> list[Cause]:
        obj.setdefault("spec", {}).setdefault("finalizers", [NAMESPACE_FINALIZER])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        return []

    def held(self, obj: Obj) -> bool:
        return bool((obj.get("spec") or {}).get("finalizers"))

    def prepare_for_delete(self, obj: Obj) -> None:
        obj.setdefault("status", {})["phase"] = "Terminating"

    def finalize(self, deleter: Deleter, rt: ResourceType, obj: Obj) -> None:
        if not self.held(obj):
            return
        name = obj["metadata"]["name"]
        for content_rt in deleter.registry.types():
            if content_rt.namespaced:
                for item in deleter.store.items(content_rt.key, name):
                    deleter.delete(content_rt, name, item["metadata"]["name"])
        self.release(deleter, rt, name)

    def release(self, deleter: Deleter, rt: ResourceType, name: str) -> None:
        store = deleter.store
        namespace = store.get(rt.key, "", name)
        if namespace is None or not namespace["metadata"].get("deletionTimestamp"):
            return
        for content_rt in deleter.registry.types():
            if content_rt.namespaced and store.items(content_rt.key, name):
                return
        if self.held(namespace):
            updated = deep_copy(namespace)
            updated["spec"]["finalizers"] = []
            if updated["metadata"].get("finalizers"):
                store.put(rt.key, updated, namespace)
            else:
                deleter.remove(rt, updated)


def _config_key_causes(obj: Obj) -> list[Cause]:
    causes: list[Cause] = []
    for field in ("data", "binaryData", "stringData"):
        for key in obj.get(field) or {}:
            if len(key) > 253 or not _CONFIG_KEY.match(key):
                causes.append(
                    (
                        f"{field}[{key}]",
                        "FieldValueInvalid",
                        (
                            f'Invalid value: "{key}": a valid config key must consist of '
                            "alphanumeric characters, '-', '_' or '.'"
                        ),
                    )
                )
    return causes


def _without(obj: Obj, *keys: str) -> Obj:
    return {k: v for k, v in obj.items() if k not in keys}


class ConfigMapStrategy(Strategy):
    """ConfigMaps: valid config keys, and no change to the data once `immutable` is set."""

    def admit(
        self, rt: ResourceType, version: str, obj: Obj, opts: WriteOptions, status_only: bool
    ) -> list[Cause]:
        return _config_key_causes(obj)

    def validate_update(self, rt: ResourceType, new: Obj, old: Obj) -> list[Cause]:
        if old.get("immutable") and _without(new, "metadata") != _without(old, "metadata"):
            return [
                (
                    "data",
                    "FieldValueForbidden",
                    "Forbidden: field is immutable when `immutable` is set",
                )
            ]
        return []


class SecretStrategy(ConfigMapStrategy):
    """Secrets: as ConfigMaps, plus type Opaque by default, base64 data, and stringData
    folded into data."""

    def admit(
        self, rt: ResourceType, version: str, obj: Obj, opts: WriteOptions, status_only: bool
    ) -> list[Cause]:
        causes = super().admit(rt, version, obj, opts, status_only)
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        data = obj.get("data") or {}
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                causes.append((f"data[{key}]", "FieldValueInvalid", "Invalid value: not base64"))
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        if data:
            obj["data"] = data
        return causes


class EventStrategy(Strategy):
    """Events (core/v1 and events.k8s.io/v1): they expire after the server's TTL."""

    expires = True

    def last_write(self, obj: Obj) -> datetime | None:
        """The newest of the times an Event records."""
        series = obj.get("series") or {}
        stamps = [
            parse_time(value)
            for value in (
                obj.get("lastTimestamp"),
                obj.get("eventTime"),
                obj.get("deprecatedLastTimestamp"),
                series.get("lastObservedTime"),
                obj["metadata"].get("creationTimestamp"),
            )
            if isinstance(value, str)
        ]
        known = [stamp for stamp in stamps if stamp is not None]
        return max(known) if known else None


class CustomResourceDefinitionStrategy(Strategy):
    """CRDs: validated names and versions, status (accepted names, stored versions,
    conditions) computed by the server, what is served rebuilt on every change, and
    deletion that first deletes every instance."""

    def prepare_for_create(self, rt: ResourceType, obj: Obj) -> None:
        pass  # admission computes the status

    def prepare_for_update(self, rt: ResourceType, new: Obj, old: Obj) -> None:
        _keep_status(new, old)

    def admit(
        self, rt: ResourceType, version: str, obj: Obj, opts: WriteOptions, status_only: bool
    ) -> list[Cause]:
        causes: list[Cause] = []
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        group = spec.get("group")
        plural = names.get("plural")
        if not group:
            causes.append(("spec.group", "FieldValueRequired", "Required value"))
        if not plural:
            causes.append(("spec.names.plural", "FieldValueRequired", "Required value"))
        if not names.get("kind"):
            causes.append(("spec.names.kind", "FieldValueRequired", "Required value"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(
                (
                    "spec.scope",
                    "FieldValueNotSupported",
                    'Unsupported value: must be "Namespaced" or "Cluster"',
                )
            )
        versions = spec.get("versions") or []
        if not versions:
            causes.append(("spec.versions", "FieldValueRequired", "Required value"))
        elif sum(1 for v in versions if v.get("storage")) != 1:
            causes.append(
                (
                    "spec.versions",
                    "FieldValueInvalid",
                    "Invalid value: must have exactly one version marked as storage version",
                )
            )
        if group and plural and obj["metadata"].get("name") != f"{plural}.{group}":
            causes.append(
                (
                    "metadata.name",
                    "FieldValueInvalid",
                    f'Invalid value: "{obj["metadata"].get("name")}": '
                    'must be spec.names.plural+"."+spec.group',
                )
            )
        if causes:
            return causes
        for key, value in (
            ("singular", names["kind"].lower()),
            ("listKind", names["kind"] + "List"),
        ):
            names.setdefault(key, value)
        obj["status"] = _crd_status(obj.get("status") or {}, names, versions)
        return causes

    def after_write(self, rt: ResourceType, store: Store, registry: Registry) -> None:
        registry.rebuild(store.items(rt.key))

    def deletion_finalizers(self, obj: Obj) -> tuple[str, ...]:
        return (CRD_CLEANUP,)

    def finalize(self, deleter: Deleter, rt: ResourceType, obj: Obj) -> None:
        if CRD_CLEANUP not in (obj["metadata"].get("finalizers") or []):
            return
        served = deleter.registry.by_key(_served_key(obj))
        if served is not None:
            for item in deleter.store.items(served.key):
                meta = item["metadata"]
                deleter.delete(served, meta.get("namespace"), meta["name"])
        self.release(deleter, rt, obj["metadata"]["name"])

    def release(self, deleter: Deleter, rt: ResourceType, name: str) -> None:
        current = deleter.store.get(rt.key, "", name)
        if current is None or not current["metadata"].get("deletionTimestamp"):
            return
        if deleter.store.count(_served_key(current)) == 0:
            deleter.drop_finalizer(rt, current, CRD_CLEANUP)


def _served_key(crd: Obj) -> str:
    """The type key of the kind a CRD defines."""
    return f"{crd['spec']['group']}/{crd['spec']['names']['plural']}"


def _crd_status(
    old_status: dict[str, Any], names: dict[str, Any], versions: list[dict[str, Any]]
) -> dict[str, Any]:
    """A valid CRD's status: its names accepted, the storage version recorded among the
    stored versions, and conditions that keep their transition time while they hold."""
    stamp = now()
    previous = {c.get("type"): c for c in old_status.get("conditions") or []}

    def condition(kind: str, reason: str, message: str) -> dict[str, Any]:
        old = previous.get(kind)
        when = old["lastTransitionTime"] if old and old.get("status") == "True" else stamp
        return {
            "type": kind,
            "status": "True",
            "lastTransitionTime": when,
            "reason": reason,
            "message": message,
        }

    storage = next(v["name"] for v in versions if v.get("storage"))
    stored = list(old_status.get("storedVersions") or [])
    if storage not in stored:
        stored.append(storage)
    return {
        "acceptedNames": deep_copy(names),
        "storedVersions": stored,
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition(
                "Established", "InitialNamesAccepted", "the initial names have been accepted"
            ),
        ],
    }


class CustomResourceStrategy(Strategy):
    """Custom resources: admission by the CRD's structural schema (pruning unknown fields,
    defaults, validation); their CRD's deletion waits for them."""

    def admit(
        self, rt: ResourceType, version: str, obj: Obj, opts: WriteOptions, status_only: bool
    ) -> list[Cause]:
        schema = rt.schemas.get(version)
        if not schema:
            return []
        status_schema = (schema.get("properties") or {}).get("status")
        if status_only and isinstance(status_schema, dict):
            # A write to /status changes nothing else, so only the status is checked (what
            # validation ratcheting does upstream for unchanged fields).
            part = {"status": obj["status"]} if "status" in obj else {}
            partial_schema = {"type": "object", "properties": {"status": status_schema}}
            pruned, problems = structural.admit(part, partial_schema)
            if "status" in part:
                obj["status"] = part["status"]
        else:
            pruned, problems = structural.admit(obj, schema)
        if pruned and opts.field_validation == "Strict":
            unknown = ", ".join(f'unknown field "{p}"' for p in pruned)
            raise bad_request(f"strict decoding error: {unknown}")
        if pruned and opts.field_validation == "Warn":
            opts.warnings.extend(f'unknown field "{p}"' for p in pruned)
        return [(p.path, p.reason, p.message) for p in problems]

    def holders(self, rt: ResourceType, obj: Obj) -> list[tuple[str, str]]:
        return [*super().holders(rt, obj), (CRD_KEY, rt.qualified)]
