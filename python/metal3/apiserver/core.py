"""The REST semantics of the API server, independent of HTTP: create, get, list, update
and patch with the real contract (optimistic concurrency, status subresource, generation,
finalizers), each kind's own rules coming from its strategy (`strategies`); deletion and
garbage collection are `deletion`'s, reached through the same `Core`."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from metal3.apiserver import errors
from metal3.apiserver.deletion import DeleteOptions, Deleter
from metal3.apiserver.errors import ApiError, Cause, bad_request
from metal3.apiserver.objects import deep_copy, generated_name, label_error, name_error, now
from metal3.apiserver.patch import json_patch, merge_patch, strategic_merge_patch
from metal3.apiserver.registry import Registry, ResourceType
from metal3.apiserver.selectors import (
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from metal3.apiserver.store import Obj, Store
from metal3.apiserver.strategies import CRD_KEY, NAMESPACE_KEY

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


@dataclass
class WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"  # Strict, Warn or Ignore (the server default is Warn)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ListResult:
    items: list[Obj]
    resource_version: str
    continue_token: str | None
    remaining: int | None


def _without(obj: Obj, *keys: str) -> Obj:
    return {k: v for k, v in obj.items() if k not in keys}


class Core:
    """All object operations; every method runs without awaiting, so each is atomic."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self.deleter = Deleter(store, registry)
        self.registry.rebuild(self.store.items(CRD_KEY))
        namespaces = self.registry.by_key(NAMESPACE_KEY)
        assert namespaces is not None
        for name in DEFAULT_NAMESPACES:
            if self.store.get(NAMESPACE_KEY, "", name) is None:
                self.create(namespaces, "v1", None, {"metadata": {"name": name}})

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
        """The generic metadata checks, then the kind's defaulting and validation; raises
        422 Invalid with every cause found."""
        meta = obj["metadata"]
        name = meta.get("name", "")
        causes: list[Cause] = []
        problem = name_error(name, label=rt.strategy.names_are_labels)
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
        causes.extend(rt.strategy.admit(rt, version, obj, opts, status_only))
        if causes:
            raise errors.invalid(rt.kind, rt.group, name, causes)

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
        rt.strategy.prepare_for_create(rt, obj)
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
        else:
            rt.strategy.prepare_for_update(rt, new, old)
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
        self._admit(rt, version, new, opts, status_only=subresource == "status")
        refused = rt.strategy.validate_update(rt, new, old)
        if refused:
            raise errors.invalid(rt.kind, rt.group, old_meta["name"], refused)
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
        if old_meta.get("deletionTimestamp") and not self.deleter.held(rt, new):
            return self.deleter.remove(rt, new)
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
        return self.deleter.delete(rt, namespace, name, options)

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
            self.deleter.delete(
                rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], options
            )
            for obj in result.items
        ]

    def expire_events(self, ttl: float) -> int:
        """Delete Events not written for `ttl` seconds (kube-apiserver's --event-ttl)."""
        return self.deleter.expire(ttl)

    def _save(self, rt: ResourceType, new: Obj, old: Obj | None) -> Obj:
        """Stores a created or updated object, then runs its kind's after-write hook."""
        stored = self.store.put(rt.key, new, old)
        rt.strategy.after_write(rt, self.store, self.registry)
        return stored
