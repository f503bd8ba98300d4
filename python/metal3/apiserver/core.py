"""The REST semantics of the API server, independent of HTTP: create, get, list, update,
patch and delete with the real contract (optimistic concurrency, status subresource,
generation, finalizers, garbage collection, schema admission for custom resources)."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from metal3.api import structural
from metal3.apiserver import errors
from metal3.apiserver.errors import ApiError, bad_request
from metal3.apiserver.objects import (
    deep_copy,
    generated_name,
    label_error,
    name_error,
    now,
    parse_time,
)
from metal3.apiserver.patch import json_patch, merge_patch, strategic_merge_patch
from metal3.apiserver.registry import CRD_KEY, NAMESPACE_KEY, Registry, ResourceType
from metal3.apiserver.selectors import (
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from metal3.apiserver.store import Obj, Store

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"
NAMESPACE_FINALIZER = "kubernetes"

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


@dataclass
class WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"  # Strict, Warn or Ignore (the server default is Warn)
    warnings: list[str] = field(default_factory=list)


@dataclass
class DeleteOptions:
    propagation_policy: str | None = None
    precondition_uid: str | None = None
    precondition_rv: str | None = None
    dry_run: bool = False


@dataclass
class ListResult:
    items: list[Obj]
    resource_version: str
    continue_token: str | None
    remaining: int | None


def _meta(obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    return meta


def _without(obj: Obj, *keys: str) -> Obj:
    return {k: v for k, v in obj.items() if k not in keys}


_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _held(rt: ResourceType, obj: Obj) -> bool:
    """Whether something still keeps a deleted object: finalizers (and for a namespace, the
    spec.finalizers the server clears once the namespace is empty)."""
    if obj["metadata"].get("finalizers"):
        return True
    return rt.key == NAMESPACE_KEY and bool((obj.get("spec") or {}).get("finalizers"))


class Core:
    """All object operations; every method runs without awaiting, so each is atomic."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        # Watch event lines shared by every watcher of a version: (rv, type, apiVersion) -> line.
        self.encoded_events: dict[tuple[int, str, str], bytes] = {}
        # Open watch streams (their subscriptions), so that shutdown can end them cleanly.
        self.active_watches: set[Any] = set()
        self.registry.rebuild(self.store.items(CRD_KEY))
        for name in DEFAULT_NAMESPACES:
            if self.store.get(NAMESPACE_KEY, "", name) is None:
                self.create(self._rt(NAMESPACE_KEY), "v1", None, {"metadata": {"name": name}})

    def _rt(self, key: str) -> ResourceType:
        rt = self.registry.by_key(key)
        assert rt is not None
        return rt

    # -- reads -------------------------------------------------------------------------------

    def output(self, rt: ResourceType, version: str, obj: Obj) -> Obj:
        """The object as the requested version shows it (no conversion: same schema)."""
        api_version = rt.api_version(version)
        if obj.get("apiVersion") == api_version and obj.get("kind") == rt.kind:
            return obj
        return {**obj, "apiVersion": api_version, "kind": rt.kind}

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.store.get(rt.key, namespace or "", name)
        if obj is None:
            raise errors.not_found(rt.plural, rt.group, name)
        return obj

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> ListResult:
        labels = parse_label_selector(label_selector) if label_selector else []
        fields = parse_field_selector(field_selector, rt.field_selectors) if field_selector else []
        start: tuple[str, str] | None = None
        list_rv = str(self.store.rv)
        if continue_token:
            try:
                token = orjson.loads(base64.urlsafe_b64decode(continue_token.encode()))
                start = (str(token["ns"]), str(token["name"]))
                list_rv = str(int(token["rv"]))
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise bad_request(f"invalid continue token: {exc}") from exc
            if int(list_rv) < self.store.horizon:
                raise ApiError(
                    410,
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.",
                    "Expired",
                )
        items = self.store.items(rt.key, namespace if rt.namespaced else None)
        selected: list[Obj] = []
        next_token: str | None = None
        remaining: int | None = None
        for index, obj in enumerate(items):
            meta = obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if start is not None and key <= start:
                continue
            if labels and not labels_match(labels, obj):
                continue
            if fields and not fields_match(fields, obj):
                continue
            if limit and len(selected) == limit:
                last = selected[-1]["metadata"]
                next_token = base64.urlsafe_b64encode(
                    orjson.dumps(
                        {"rv": list_rv, "ns": last.get("namespace", ""), "name": last["name"]}
                    )
                ).decode()
                if not labels and not fields:
                    remaining = len(items) - index
                break
            selected.append(obj)
        return ListResult(selected, list_rv, next_token, remaining)

    # -- admission ---------------------------------------------------------------------------

    def _check_type(self, rt: ResourceType, version: str, body: Obj) -> None:
        api_version = body.get("apiVersion")
        kind = body.get("kind")
        if api_version and api_version not in [rt.api_version(v) for v in rt.versions]:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rt.api_version(version)})"
            )
        if kind and kind != rt.kind:
            raise bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )

    def _admit(
        self,
        rt: ResourceType,
        version: str,
        obj: Obj,
        opts: WriteOptions,
        status_only: bool = False,
    ) -> None:
        """Type-specific defaulting and validation; raises 422 Invalid. A write to /status
        changes nothing else, so only the status is checked (what validation ratcheting
        does upstream for unchanged fields)."""
        meta = obj["metadata"]
        name = meta.get("name", "")
        causes: list[tuple[str, str, str]] = []
        problem = name_error(name, label=rt.key == NAMESPACE_KEY)
        if problem:
            causes.append(("metadata.name", "FieldValueInvalid", problem))
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str):
                raise bad_request(f"metadata.labels.{key} must be a string")
            problem = label_error(key, value)
            if problem:
                causes.append(("metadata.labels", "FieldValueInvalid", problem))
        for key, value in (meta.get("annotations") or {}).items():
            if not isinstance(value, str):
                raise bad_request(f"metadata.annotations.{key} must be a string")
        if rt.key in ("/secrets", "/configmaps"):
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
        if rt.key == "/secrets":
            self._admit_secret(obj, causes)
        elif rt.key == NAMESPACE_KEY:
            obj.setdefault("spec", {}).setdefault("finalizers", [NAMESPACE_FINALIZER])
            obj.setdefault("status", {}).setdefault("phase", "Active")
        elif rt.key == CRD_KEY:
            self._admit_crd(obj, causes)
        elif not rt.builtin:
            schema = rt.schemas.get(version)
            if schema:
                status_schema = (schema.get("properties") or {}).get("status")
                if status_only and isinstance(status_schema, dict):
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
                causes.extend((p.path, p.reason, p.message) for p in problems)
        if causes:
            raise errors.invalid(rt.kind, rt.group, name, causes)

    def _admit_secret(self, obj: Obj, causes: list[tuple[str, str, str]]) -> None:
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

    def _admit_crd(self, obj: Obj, causes: list[tuple[str, str, str]]) -> None:
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
            return
        for key, value in (
            ("singular", names["kind"].lower()),
            ("listKind", names["kind"] + "List"),
        ):
            names.setdefault(key, value)
        old_status = obj.get("status") or {}
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
        obj["status"] = {
            "acceptedNames": deep_copy(names),
            "storedVersions": stored,
            "conditions": [
                condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                condition(
                    "Established", "InitialNamesAccepted", "the initial names have been accepted"
                ),
            ],
        }

    def _check_namespace(
        self, rt: ResourceType, namespace: str | None, creating: bool, name: str = ""
    ) -> str:
        if not rt.namespaced:
            return ""
        if not namespace:
            raise bad_request("a namespace is required for a namespaced resource")
        ns = self.store.get(NAMESPACE_KEY, "", namespace)
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if creating and ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                f'{rt.qualified} "{name}" is forbidden: unable to create new content in '
                f"namespace {namespace} because it is being terminated",
                "Forbidden",
            )
        return namespace

    # -- create ------------------------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        body: Any,
        opts: WriteOptions | None = None,
    ) -> Obj:
        opts = opts or WriteOptions()
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        self._check_type(rt, version, body)
        obj: Obj = deep_copy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        body_ns = meta.get("namespace")
        if rt.namespaced and body_ns and namespace and body_ns != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        ns = self._check_namespace(
            rt, namespace or body_ns, creating=True, name=meta.get("name") or ""
        )
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = generated_name(meta["generateName"])
            else:
                raise errors.invalid(
                    rt.kind,
                    rt.group,
                    "",
                    [
                        (
                            "metadata.name",
                            "FieldValueRequired",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
        name = meta["name"]
        obj["apiVersion"] = rt.api_version(rt.storage_version)
        obj["kind"] = rt.kind
        if rt.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        for key in (
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "managedFields",
            "selfLink",
        ):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if rt.has_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.status_subresource and rt.key != CRD_KEY:
            obj.pop("status", None)
        self._admit(rt, version, obj, opts)
        if self.store.get(rt.key, ns, name) is not None:
            raise errors.already_exists(rt.plural, rt.group, name)
        if opts.dry_run:
            return obj
        return self._save(rt, obj, None)

    # -- update ------------------------------------------------------------------------------

    def update(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str = "",
        opts: WriteOptions | None = None,
    ) -> Obj:
        opts = opts or WriteOptions()
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        self._check_type(rt, version, body)
        old = self.get(rt, namespace, name)
        new = deep_copy(body)
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("name") and meta["name"] != name:
            raise bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        uid = meta.get("uid")
        if uid and uid != old["metadata"]["uid"]:
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{old['metadata']['uid']}",
            )
        rv = meta.get("resourceVersion")
        if rv:
            if rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rt.plural, rt.group, name)
        elif not rt.unconditional_update:
            raise errors.invalid(
                rt.kind,
                rt.group,
                name,
                [
                    (
                        "metadata.resourceVersion",
                        "FieldValueInvalid",
                        "Invalid value: 0x0: must be specified for an update",
                    )
                ],
            )
        return self._write_update(rt, version, old, new, subresource, opts)

    def _write_update(
        self,
        rt: ResourceType,
        version: str,
        old: Obj,
        new: Obj,
        subresource: str,
        opts: WriteOptions,
    ) -> Obj:
        old_meta = old["metadata"]
        if subresource == "status":
            if not rt.status_subresource:
                raise errors.not_found(rt.plural + "/status", rt.group, old_meta["name"])
            merged = deep_copy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif subresource:
            raise errors.not_found(f"{rt.plural}/{subresource}", rt.group, old_meta["name"])
        elif rt.status_subresource and rt.key != CRD_KEY:
            if "status" in old:
                new["status"] = deep_copy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        meta["name"] = old_meta["name"]
        if rt.namespaced:
            meta["namespace"] = old_meta["namespace"]
        else:
            meta.pop("namespace", None)
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        new["apiVersion"] = rt.api_version(rt.storage_version)
        new["kind"] = rt.kind
        if rt.key == CRD_KEY and subresource != "status":
            new["status"] = deep_copy(old.get("status") or {})
        if rt.key == NAMESPACE_KEY:
            new["status"] = deep_copy(old.get("status") or {})
        self._admit(rt, version, new, opts, status_only=subresource == "status")
        immutable = rt.key in ("/secrets", "/configmaps") and old.get("immutable")
        if immutable and _without(new, "metadata") != _without(old, "metadata"):
            raise errors.invalid(
                rt.kind,
                rt.group,
                old_meta["name"],
                [
                    (
                        "data",
                        "FieldValueForbidden",
                        "Forbidden: field is immutable when `immutable` is set",
                    )
                ],
            )
        if rt.has_generation:
            ignored = ("metadata", "status") if rt.status_subresource else ("metadata",)
            generation = old_meta.get("generation", 1)
            if _without(new, *ignored) != _without(old, *ignored):
                generation += 1
            meta["generation"] = generation
        else:
            meta.pop("generation", None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    rt.kind,
                    rt.group,
                    old_meta["name"],
                    [
                        (
                            "metadata.finalizers",
                            "FieldValueForbidden",
                            "Forbidden: no new finalizers can be added if the object is being "
                            "deleted",
                        )
                    ],
                )
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        if new == old:
            return old
        if opts.dry_run:
            return new
        if old_meta.get("deletionTimestamp") and not _held(rt, new):
            return self._remove(rt, new)
        return self._save(rt, new, old)

    # -- patch -------------------------------------------------------------------------------

    def patch(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        subresource: str = "",
        opts: WriteOptions | None = None,
    ) -> Obj:
        opts = opts or WriteOptions()
        old = self.get(rt, namespace, name)
        current = self.output(rt, version, old)
        if content_type == MERGE_PATCH:
            if not isinstance(patch, dict):
                raise bad_request("a merge patch must be a JSON object")
            new = merge_patch(current, patch)
        elif content_type == JSON_PATCH:
            new = json_patch(current, patch)
        elif content_type == STRATEGIC_PATCH and rt.builtin:
            if not isinstance(patch, dict):
                raise bad_request("a strategic merge patch must be a JSON object")
            new = strategic_merge_patch(current, patch)
        else:
            accepted = [JSON_PATCH, MERGE_PATCH] + ([STRATEGIC_PATCH] if rt.builtin else [])
            raise ApiError(
                415,
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(accepted)}",
                "UnsupportedMediaType",
            )
        if not isinstance(new, dict):
            raise bad_request("the patched object must be a JSON object")
        new = deep_copy(new)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("name") != name:
            raise bad_request("the name of the object cannot be changed by a patch")
        rv = meta.get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.plural, rt.group, name)
        self._check_type(rt, version, new)
        return self._write_update(rt, version, old, new, subresource, opts)

    # -- delete ------------------------------------------------------------------------------

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        options: DeleteOptions | None = None,
    ) -> Obj:
        options = options or DeleteOptions()
        obj = self.get(rt, namespace, name)
        meta = obj["metadata"]
        if options.precondition_uid and options.precondition_uid != meta["uid"]:
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: UID in precondition: {options.precondition_uid}, "
                f"UID in object meta: {meta['uid']}",
            )
        if options.precondition_rv and options.precondition_rv != meta["resourceVersion"]:
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{options.precondition_rv}, ResourceVersion in object meta: "
                f"{meta['resourceVersion']}",
            )
        policy = options.propagation_policy
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise errors.invalid(
                "DeleteOptions",
                "",
                "",
                [
                    (
                        "propagationPolicy",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{policy}": supported values: "Foreground", '
                        '"Background", "Orphan", "nil"',
                    )
                ],
            )
        if options.dry_run:
            return obj
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Orphan" and ORPHAN not in finalizers:
            finalizers.append(ORPHAN)
        if policy == "Foreground" and FOREGROUND not in finalizers:
            finalizers.append(FOREGROUND)
        if rt.key == CRD_KEY and CRD_CLEANUP not in finalizers:
            finalizers.append(CRD_CLEANUP)
        # A namespace always terminates gracefully: its spec.finalizers hold it until empty.
        namespace_held = rt.key == NAMESPACE_KEY and bool((obj.get("spec") or {}).get("finalizers"))
        if meta.get("deletionTimestamp"):
            if finalizers == list(meta.get("finalizers") or []):
                return obj
            updated = deep_copy(obj)
            updated["metadata"]["finalizers"] = finalizers
            obj = self.store.put(rt.key, updated, obj)
        elif finalizers or namespace_held:
            updated = deep_copy(obj)
            umeta = updated["metadata"]
            if finalizers:
                umeta["finalizers"] = finalizers
            umeta["deletionTimestamp"] = now()
            umeta["deletionGracePeriodSeconds"] = 0
            if rt.has_generation:
                umeta["generation"] = umeta.get("generation", 1) + 1
            if rt.key == NAMESPACE_KEY:
                updated.setdefault("status", {})["phase"] = "Terminating"
            obj = self.store.put(rt.key, updated, obj)
        else:
            return self._remove(rt, obj)
        self._run_system_finalizers(rt, obj)
        current = self.store.get(rt.key, meta.get("namespace", ""), name)
        if current is None:
            return {**obj, "metadata": {**obj["metadata"], "finalizers": []}}
        return current

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        label_selector: str,
        field_selector: str,
        options: DeleteOptions,
    ) -> list[Obj]:
        result = self.list_objects(rt, namespace, label_selector, field_selector)
        return [
            self.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], options)
            for obj in result.items
        ]

    def expire_events(self, ttl: float) -> int:
        """Delete Events not written for `ttl` seconds (kube-apiserver's --event-ttl); the
        last write is the newest of the times an Event records."""
        limit = datetime.now(UTC) - timedelta(seconds=ttl)
        expired = 0
        for key in ("/events", "events.k8s.io/events"):
            rt = self._rt(key)
            for obj in self.store.items(key):
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
                if known and max(known) < limit:
                    meta = obj["metadata"]
                    self.delete(rt, meta.get("namespace"), meta["name"])
                    expired += 1
        return expired

    def _save(self, rt: ResourceType, new: Obj, old: Obj | None) -> Obj:
        """Stores a created or updated object; a CRD change changes what is served."""
        stored = self.store.put(rt.key, new, old)
        self._crds_changed(rt)
        return stored

    def _crds_changed(self, rt: ResourceType) -> None:
        if rt.key == CRD_KEY:
            self.registry.rebuild(self.store.items(CRD_KEY))

    def _remove(self, rt: ResourceType, obj: Obj) -> Obj:
        gone = self.store.remove(rt.key, obj)
        self._crds_changed(rt)
        self._after_removal(rt, gone)
        return gone

    def _drop_finalizer(self, rt: ResourceType, obj: Obj, finalizer: str) -> None:
        current = self.store.get(
            rt.key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
        )
        if current is None or finalizer not in (current["metadata"].get("finalizers") or []):
            return
        updated = deep_copy(current)
        updated["metadata"]["finalizers"] = [
            f for f in updated["metadata"]["finalizers"] if f != finalizer
        ]
        if not updated["metadata"]["finalizers"]:
            updated["metadata"].pop("finalizers")
        if not _held(rt, updated):
            self._remove(rt, updated)
        else:
            self.store.put(rt.key, updated, current)

    # -- finalizers the server itself runs ---------------------------------------------------

    def _dependents(self, uid: str) -> list[tuple[ResourceType, Obj]]:
        found: list[tuple[ResourceType, Obj]] = []
        for key, obj in self.store.all_objects():
            refs = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                rt = self.registry.by_key(key)
                if rt is not None:
                    found.append((rt, obj))
        return found

    def _uid_exists(self, uid: str) -> bool:
        return any(obj["metadata"].get("uid") == uid for _, obj in self.store.all_objects())

    def _run_system_finalizers(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        finalizers = meta.get("finalizers") or []
        if ORPHAN in finalizers:
            for dep_rt, dep in self._dependents(meta["uid"]):
                updated = deep_copy(dep)
                refs = [
                    r for r in updated["metadata"]["ownerReferences"] if r.get("uid") != meta["uid"]
                ]
                if refs:
                    updated["metadata"]["ownerReferences"] = refs
                else:
                    updated["metadata"].pop("ownerReferences")
                self.store.put(dep_rt.key, updated, dep)
            self._drop_finalizer(rt, obj, ORPHAN)
        if FOREGROUND in finalizers:
            for dep_rt, dep in self._dependents(meta["uid"]):
                self._collect(dep_rt, dep, meta["uid"], "Foreground")
            self._check_foreground(rt, obj)
        if rt.key == NAMESPACE_KEY and (obj.get("spec") or {}).get("finalizers"):
            for ns_rt in self.registry.types():
                if ns_rt.namespaced:
                    for item in self.store.items(ns_rt.key, meta["name"]):
                        self.delete(ns_rt, meta["name"], item["metadata"]["name"])
            self._check_namespace_empty(meta["name"])
        if rt.key == CRD_KEY and CRD_CLEANUP in finalizers:
            cr_rt = self.registry.by_key(f"{obj['spec']['group']}/{obj['spec']['names']['plural']}")
            if cr_rt is not None:
                for item in self.store.items(cr_rt.key):
                    self.delete(cr_rt, item["metadata"].get("namespace"), item["metadata"]["name"])
            self._check_crd_empty(obj)

    def _collect(self, rt: ResourceType, dep: Obj, owner_uid: str, policy: str | None) -> None:
        """Garbage-collect one dependent whose owner `owner_uid` is going away."""
        refs = dep["metadata"].get("ownerReferences") or []
        others = [
            r for r in refs if r.get("uid") != owner_uid and self._uid_exists(str(r.get("uid")))
        ]
        meta = dep["metadata"]
        if others:
            updated = deep_copy(dep)
            updated["metadata"]["ownerReferences"] = others
            self.store.put(rt.key, updated, dep)
            return
        if self.store.get(rt.key, meta.get("namespace", ""), meta["name"]) is None:
            return
        self.delete(
            rt, meta.get("namespace"), meta["name"], DeleteOptions(propagation_policy=policy)
        )

    def _check_foreground(self, rt: ResourceType, obj: Obj) -> None:
        if not self._dependents(obj["metadata"]["uid"]):
            self._drop_finalizer(rt, obj, FOREGROUND)

    def _check_namespace_empty(self, namespace: str) -> None:
        ns = self.store.get(NAMESPACE_KEY, "", namespace)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        for rt in self.registry.types():
            if rt.namespaced and self.store.items(rt.key, namespace):
                return
        ns_rt = self._rt(NAMESPACE_KEY)
        if (ns.get("spec") or {}).get("finalizers"):
            updated = deep_copy(ns)
            updated["spec"]["finalizers"] = []
            if updated["metadata"].get("finalizers"):
                self.store.put(ns_rt.key, updated, ns)
            else:
                self._remove(ns_rt, updated)

    def _check_crd_empty(self, crd: Obj) -> None:
        current = self.store.get(CRD_KEY, "", crd["metadata"]["name"])
        if current is None or not current["metadata"].get("deletionTimestamp"):
            return
        key = f"{current['spec']['group']}/{current['spec']['names']['plural']}"
        if self.store.count(key) == 0:
            self._drop_finalizer(self._rt(CRD_KEY), current, CRD_CLEANUP)

    def _after_removal(self, rt: ResourceType, gone: Obj) -> None:
        meta = gone["metadata"]
        for dep_rt, dep in self._dependents(meta["uid"]):
            self._collect(dep_rt, dep, meta["uid"], None)
        for owner in meta.get("ownerReferences") or []:
            for key, candidate in self.store.all_objects():
                cmeta = candidate["metadata"]
                if cmeta.get("uid") == owner.get("uid") and FOREGROUND in (
                    cmeta.get("finalizers") or []
                ):
                    owner_rt = self.registry.by_key(key)
                    if owner_rt is not None:
                        self._check_foreground(owner_rt, candidate)
        if rt.namespaced:
            self._check_namespace_empty(meta.get("namespace", ""))
        if not rt.builtin:
            crd = self.store.get(CRD_KEY, "", rt.qualified)
            if crd is not None:
                self._check_crd_empty(crd)
