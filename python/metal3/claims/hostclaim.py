"""The HostClaim controller: a tenant's claim gets a host through the claim engine, its workload
goes onto the host, and the host's progress comes back into the claim's status.

One reconcile of a claim:

- deleted: the engine releases the host (workload cleared, powered off, deprovisioned per the
  host's automatedCleaningMode, consumerRef cleared); the claim's Secret copies are deleted and
  only then the finalizer ``metal3.io/hostclaim`` is removed;
- otherwise the finalizer first, then the binding: among the claim's own namespace and those
  whose HostDeployPolicy allows it (or just ``hostSelector.inNamespace``);
- the Secrets the claim names (userData, networkData, metaData; only from the claim's own
  namespace) are copied into the host's namespace under names derived from the claim's uid and
  labelled with it; nothing is ever copied the other way, so the tenant never sees the host's
  BMC credentials;
- image, customDeploy, the copies and ``online`` (the claim's poweredOn) are written on the host;
  changing the image re-provisions the host (the host's own state machine does it);
- status: bareMetalHost, hardwareData, poweredOn, the host's provisioning state, and the
  conditions Associated and Synchronized with upstream's reasons.

A claim whose recorded host is gone says so (Associated False, MissingBareMetalHost) and is not
bound to another host behind the tenant's back.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metal3.api.constants import (
    API_VERSION,
    HOSTCLAIM_FINALIZER,
    HOSTCLAIM_KIND,
    HOSTCLAIM_NAME_ANNOTATION,
    HOSTCLAIM_NAMESPACE_ANNOTATION,
    HOSTCLAIM_UID_LABEL,
    PAUSED_ANNOTATION,
    HostClaimCondition,
    HostClaimReason,
)
from metal3.claims import policy
from metal3.claims.engine import ClaimEngine, Consumer, HostRequest, spec_of, state_of
from metal3.controllers.baremetalhost.status import now_rfc3339
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.controller import Controller, Result
from metal3.kube.events import EventRecorder
from metal3.kube.informer import JsonObject, ObjectKey, object_key
from metal3.kube.manager import Manager
from metal3.kube.resources import (
    BAREMETALHOSTS,
    HARDWAREDATA,
    HOSTCLAIMS,
    HOSTDEPLOYPOLICIES,
    NAMESPACES,
    SECRETS,
)

log = logging.getLogger(__name__)

WAITING_RECHECK = 60.0  # seconds; host, policy and namespace events recheck waiting claims sooner
RELEASE_RECHECK = 10.0  # seconds; the host's events wake a deleted claim sooner


@dataclass(frozen=True)
class DataField:
    """One Secret reference a claim may carry and how it reaches the host."""

    field: str  # spec field on the claim and the host
    suffix: str  # of the copy's name
    reason: HostClaimReason  # Synchronized reason when it cannot be copied


DATA_FIELDS = (
    DataField("userData", "userdata", HostClaimReason.BAD_USER_DATA_SECRET),
    DataField("networkData", "networkdata", HostClaimReason.BAD_NETWORK_DATA_SECRET),
    DataField("metaData", "metadata", HostClaimReason.BAD_META_DATA_SECRET),
)


class SyncError(Exception):
    """The claim's configuration cannot be put on the host; ``reason`` for Synchronized."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def copy_name(claim_uid: str, suffix: str) -> str:
    """Name of a claim's Secret copy in the host's namespace (the claim's uid makes it its own)."""
    return f"hostclaim-{claim_uid}-{suffix}"


def consumer_of(claim: Mapping[str, Any]) -> Consumer:
    metadata = claim.get("metadata") or {}
    return Consumer(
        api_version=API_VERSION,
        kind=HOSTCLAIM_KIND,
        namespace=metadata.get("namespace") or "",
        name=metadata.get("name") or "",
        uid=metadata.get("uid") or "",
    )


def set_condition(
    conditions: list[JsonObject],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    when: str,
) -> list[JsonObject]:
    """The conditions with ``type_`` set; its lastTransitionTime moves only with its status."""
    value = "True" if status else "False"
    result: list[JsonObject] = []
    previous: JsonObject | None = None
    for condition in conditions:
        if condition.get("type") == type_:
            previous = condition
        else:
            result.append(condition)
    transition = when
    if previous is not None and previous.get("status") == value:
        transition = previous.get("lastTransitionTime") or when
    condition = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    return sorted(result, key=lambda c: str(c.get("type")))


class HostClaimReconciler:
    def __init__(
        self,
        client: KubeClient,
        manager: Manager,
        engine: ClaimEngine,
        recorder: EventRecorder | None = None,
        *,
        workers: int = 2,
    ) -> None:
        self.client = client
        self.engine = engine
        self.recorder = recorder
        self.claims = manager.informer(HOSTCLAIMS)
        self.hosts = manager.informer(BAREMETALHOSTS)
        self.secrets = manager.informer(SECRETS)
        self.policies = manager.informer(HOSTDEPLOYPOLICIES)
        self.namespaces = manager.informer(NAMESPACES)
        self.hardware = manager.informer(HARDWAREDATA)
        self.controller = Controller("hostclaim", self.reconcile, workers=workers)
        manager.add_controller(self.controller)
        self._waiting: set[ObjectKey] = set()  # claims no host could be bound to yet
        self.claims.add_handler(self._on_claim)
        # Every stored version of a host, also those the BareMetalHost controller caches
        # itself (their watch events reach no handler); deletions through the handler.
        self.hosts.store.add_listener(self._on_host_stored)
        self.hosts.add_handler(self._on_host_deleted)
        self.secrets.add_handler(self._on_secret)
        self.policies.add_handler(self._wake_waiting)
        self.namespaces.add_handler(self._wake_waiting)

    # --- watches -------------------------------------------------------------------------

    def _on_claim(self, kind: str, obj: JsonObject) -> None:
        if kind == "DELETED":
            self._waiting.discard(object_key(obj))
        self.controller.enqueue(object_key(obj))

    def _on_host_stored(self, obj: JsonObject) -> None:
        """Our claim's host changed: reconcile that claim; a host without consumer: the
        waiting ones (it may have become available)."""
        ref = spec_of(obj).get("consumerRef") or {}
        if ref.get("kind") == HOSTCLAIM_KIND and ref.get("apiVersion") == API_VERSION:
            self.controller.enqueue((ref.get("namespace") or "", ref.get("name") or ""))
        elif not ref:
            self._wake_waiting("MODIFIED", obj)

    def _on_host_deleted(self, kind: str, obj: JsonObject) -> None:
        if kind == "DELETED":
            self._on_host_stored(obj)

    def _wake_waiting(self, kind: str, obj: JsonObject) -> None:
        for key in list(self._waiting):
            self.controller.enqueue(key)

    def _on_secret(self, kind: str, obj: JsonObject) -> None:
        """A claim's copy changed (or was deleted): its claim puts it right; a Secret a claim
        names changed: the claims of that namespace naming it."""
        metadata = obj.get("metadata") or {}
        if HOSTCLAIM_UID_LABEL in (metadata.get("labels") or {}):
            annotations = metadata.get("annotations") or {}
            self.controller.enqueue(
                (
                    annotations.get(HOSTCLAIM_NAMESPACE_ANNOTATION, ""),
                    annotations.get(HOSTCLAIM_NAME_ANNOTATION, ""),
                )
            )
            return
        namespace, name = object_key(obj)
        for claim in self.claims.store.values(namespace):
            spec = claim.get("spec") or {}
            if any((spec.get(d.field) or {}).get("name") == name for d in DATA_FIELDS):
                self.controller.enqueue(object_key(claim))

    # --- reconcile -----------------------------------------------------------------------

    async def reconcile(self, key: ObjectKey) -> Result:
        claim = self.claims.store.get(*key)
        if claim is None:
            self._waiting.discard(key)
            return Result()
        try:
            if (claim.get("metadata") or {}).get("deletionTimestamp"):
                return await self._delete(claim)
            return await self._reconcile(claim)
        except ApiError as exc:
            if exc.conflict:
                return Result(backoff=True)  # a stale cache: the next look sees the newer one
            if exc.not_found and await self._gone(key):
                return Result()
            raise

    async def _gone(self, key: ObjectKey) -> bool:
        try:
            await self.client.get(HOSTCLAIMS, *key)
        except ApiError as exc:
            if exc.not_found:
                return True
            raise
        return False

    async def _reconcile(self, claim: JsonObject) -> Result:
        key = object_key(claim)
        finalizers = (claim.get("metadata") or {}).get("finalizers") or []
        if HOSTCLAIM_FINALIZER not in finalizers:
            claim = await self._set_finalizers(claim, [*finalizers, HOSTCLAIM_FINALIZER])
        consumer = consumer_of(claim)
        status = copy.deepcopy(claim.get("status") or {})
        generation = (claim.get("metadata") or {}).get("generation")
        when = now_rfc3339()
        conditions = list(status.get("conditions") or [])

        host = self.engine.bound_host(consumer)
        if host is None and status.get("bareMetalHost"):
            self._waiting.discard(key)
            recorded = status["bareMetalHost"]
            message = (
                f"the bound BareMetalHost {recorded.get('namespace')}/{recorded.get('name')} "
                "is gone or no longer names this claim as its consumer"
            )
            status["conditions"] = set_condition(
                conditions,
                HostClaimCondition.ASSOCIATED,
                False,
                HostClaimReason.MISSING_BAREMETALHOST,
                message,
                generation,
                when,
            )
            await self._write_status(claim, status, when)
            return Result()
        if host is None:
            binding = await self.engine.bind(self._request(claim, consumer))
            host = binding.host
            if host is None:
                self._waiting.add(key)
                status["conditions"] = set_condition(
                    set_condition(
                        conditions,
                        HostClaimCondition.ASSOCIATED,
                        False,
                        binding.reason or HostClaimReason.NO_BAREMETALHOST,
                        binding.message,
                        generation,
                        when,
                    ),
                    HostClaimCondition.SYNCHRONIZED,
                    False,
                    HostClaimReason.BAREMETALHOST_NOT_SYNCHRONIZED,
                    "no BareMetalHost is bound yet",
                    generation,
                    when,
                )
                for name in ("bareMetalHost", "hardwareData", "provisioningState", "poweredOn"):
                    status.pop(name, None)
                await self._write_status(claim, status, when)
                return Result(requeue_after=WAITING_RECHECK)
            if self.recorder is not None:
                self.recorder.record(
                    claim, "Normal", HostClaimReason.BAREMETALHOST_ASSOCIATED, binding.message
                )
        self._waiting.discard(key)
        host_ns, host_name = object_key(host)
        conditions = set_condition(
            conditions,
            HostClaimCondition.ASSOCIATED,
            True,
            HostClaimReason.BAREMETALHOST_ASSOCIATED,
            f"bound to BareMetalHost {host_ns}/{host_name}",
            generation,
            when,
        )
        try:
            host = await self._synchronize(claim, consumer, host)
        except SyncError as exc:
            sync = (False, exc.reason, exc.message)
        else:
            paused = PAUSED_ANNOTATION in ((host.get("metadata") or {}).get("annotations") or {})
            if paused:
                sync = (False, HostClaimReason.HOST_PAUSED, "the BareMetalHost is paused")
            else:
                sync = (True, HostClaimReason.CONFIGURATION_SYNCED, "")
        status["conditions"] = set_condition(
            conditions, HostClaimCondition.SYNCHRONIZED, *sync, generation, when
        )
        host_status = host.get("status") or {}
        status["bareMetalHost"] = {"namespace": host_ns, "name": host_name}
        if self.hardware.store.get(host_ns, host_name) is not None:
            status["hardwareData"] = {"namespace": host_ns, "name": host_name}
        else:
            status.pop("hardwareData", None)
        status["poweredOn"] = bool(host_status.get("poweredOn"))
        status["provisioningState"] = state_of(host)
        await self._write_status(claim, status, when)
        return Result()

    def _request(self, claim: JsonObject, consumer: Consumer) -> HostRequest:
        spec = claim.get("spec") or {}
        selector = dict(spec.get("hostSelector") or {})
        in_namespace = selector.pop("inNamespace", None)
        labels = (self.namespaces.store.get("", consumer.namespace) or {}).get("metadata") or {}
        policies: dict[str, list[JsonObject]] = {}
        for item in self.policies.store.values():
            policies.setdefault(object_key(item)[0], []).append(item)
        namespaces = policy.host_namespaces(
            policies, consumer.namespace, labels.get("labels") or {}, in_namespace
        )
        return HostRequest(
            consumer=consumer,
            selector=selector,
            host_namespaces=namespaces,
            failure_domain=spec.get("failureDomain") or None,
        )

    # --- synchronizing -------------------------------------------------------------------

    async def _synchronize(
        self, claim: JsonObject, consumer: Consumer, host: JsonObject
    ) -> JsonObject:
        """Copies and host fields as the claim says; the host as written."""
        spec = claim.get("spec") or {}
        host_ns = object_key(host)[0]
        fields: dict[str, Any] = {
            "image": copy.deepcopy(spec.get("image")) or None,
            "customDeploy": copy.deepcopy(spec.get("customDeploy")) or None,
            "online": bool(spec.get("poweredOn")),
        }
        wanted: set[str] = set()
        for data in DATA_FIELDS:
            ref = spec.get(data.field) or {}
            if not ref.get("name"):
                fields[data.field] = None
                continue
            name = await self._copy_secret(claim, consumer, data, ref, host_ns)
            wanted.add(name)
            fields[data.field] = {"name": name, "namespace": host_ns}
        await self._drop_copies(consumer, keep=wanted)
        try:
            written = await self.engine.update_host(consumer, fields)
        except ApiError as exc:
            if exc.conflict:
                raise
            raise SyncError(
                HostClaimReason.BAREMETALHOST_NOT_SYNCHRONIZED,
                f"the BareMetalHost refused the claim's settings: {exc.message or exc}",
            ) from exc
        return written or host

    async def _copy_secret(
        self,
        claim: JsonObject,
        consumer: Consumer,
        data: DataField,
        ref: Mapping[str, Any],
        host_ns: str,
    ) -> str:
        """Copy the claim's Secret into the host's namespace; the copy's name."""
        source_ns = ref.get("namespace") or consumer.namespace
        if source_ns != consumer.namespace:
            raise SyncError(
                data.reason,
                f"{data.field} must name a Secret in the claim's namespace {consumer.namespace}",
            )
        source = self.secrets.store.get(source_ns, str(ref.get("name")))
        if source is None:
            raise SyncError(data.reason, f"{data.field} Secret {ref.get('name')} not found")
        name = copy_name(consumer.uid, data.suffix)
        annotations = {
            HOSTCLAIM_NAMESPACE_ANNOTATION: consumer.namespace,
            HOSTCLAIM_NAME_ANNOTATION: consumer.name,
        }
        body: JsonObject = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": host_ns,
                "labels": {HOSTCLAIM_UID_LABEL: consumer.uid},
                "annotations": annotations,
            },
            "type": source.get("type") or "Opaque",
            "data": copy.deepcopy(source.get("data") or {}),
        }
        if host_ns == consumer.namespace:  # owner references cannot cross namespaces
            body["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": API_VERSION,
                    "kind": HOSTCLAIM_KIND,
                    "name": consumer.name,
                    "uid": consumer.uid,
                }
            ]
        existing = self.secrets.store.get(host_ns, name)
        if existing is None:
            try:
                await self.client.create(SECRETS, body)
                return name
            except ApiError as exc:
                if not exc.conflict:  # 409 AlreadyExists: the cache was behind; update it
                    raise
                existing = await self.client.get(SECRETS, host_ns, name)
        existing_labels = (existing.get("metadata") or {}).get("labels") or {}
        if existing_labels.get(HOSTCLAIM_UID_LABEL) != consumer.uid:
            raise SyncError(
                data.reason, f"Secret {host_ns}/{name} exists and is not this claim's copy"
            )
        if existing.get("data") != body["data"] or existing.get("type") != body["type"]:
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            await self.client.replace(SECRETS, body)
        return name

    def _copies(self, consumer: Consumer) -> list[JsonObject]:
        found = []
        for secret in self.secrets.store.values():
            labels = (secret.get("metadata") or {}).get("labels") or {}
            if labels.get(HOSTCLAIM_UID_LABEL) == consumer.uid:
                found.append(secret)
        return found

    async def _drop_copies(self, consumer: Consumer, *, keep: set[str]) -> None:
        for secret in self._copies(consumer):
            namespace, name = object_key(secret)
            if name in keep:
                continue
            try:
                await self.client.delete(SECRETS, namespace, name)
            except ApiError as exc:
                if not exc.not_found:
                    raise

    async def _drop_all_copies(
        self, claim: JsonObject, consumer: Consumer, bound: JsonObject | None
    ) -> None:
        """Delete every copy of a claim that goes, listed from the API server too (in the
        namespaces of its host): the cache may not show a copy made just before (copies in
        another namespace than the claim's have no owner reference to collect them)."""
        namespaces = {object_key(s)[0] for s in self._copies(consumer)}
        recorded = ((claim.get("status") or {}).get("bareMetalHost") or {}).get("namespace")
        namespaces.update(ns for ns in (recorded, bound and object_key(bound)[0]) if ns)
        selector = f"{HOSTCLAIM_UID_LABEL}={consumer.uid}"
        for namespace in sorted(namespaces):
            items, _ = await self.client.list(SECRETS, namespace, label_selector=selector)
            for secret in items:
                try:
                    await self.client.delete(SECRETS, *object_key(secret))
                except ApiError as exc:
                    if not exc.not_found:
                        raise

    # --- deleting ------------------------------------------------------------------------

    async def _delete(self, claim: JsonObject) -> Result:
        finalizers = (claim.get("metadata") or {}).get("finalizers") or []
        if HOSTCLAIM_FINALIZER not in finalizers:
            return Result()
        self._waiting.discard(object_key(claim))
        consumer = consumer_of(claim)
        bound = self.engine.bound_host(consumer)  # where its copies are, before it is freed
        if not await self.engine.release(consumer):
            status = copy.deepcopy(claim.get("status") or {})
            when = now_rfc3339()
            host = self.engine.bound_host(consumer)
            if host is not None:
                status["provisioningState"] = state_of(host)
            status["conditions"] = set_condition(
                list(status.get("conditions") or []),
                HostClaimCondition.ASSOCIATED,
                True,
                HostClaimReason.HOSTCLAIM_DELETING,
                "releasing the BareMetalHost: deprovisioning it",
                (claim.get("metadata") or {}).get("generation"),
                when,
            )
            await self._write_status(claim, status, when)
            return Result(requeue_after=RELEASE_RECHECK)
        await self._drop_all_copies(claim, consumer, bound)
        await self._set_finalizers(claim, [f for f in finalizers if f != HOSTCLAIM_FINALIZER])
        log.info("HostClaim %s/%s: host released, finalizer removed", *object_key(claim))
        return Result()

    # --- writing -------------------------------------------------------------------------

    async def _set_finalizers(self, claim: JsonObject, finalizers: list[str]) -> JsonObject:
        updated = copy.deepcopy(claim)
        updated["metadata"]["finalizers"] = finalizers
        updated.pop("status", None)
        return await self.client.replace(HOSTCLAIMS, updated)

    async def _write_status(self, claim: JsonObject, status: JsonObject, when: str) -> None:
        """Write the status if it says something new (lastUpdated alone is not news)."""
        current = claim.get("status") or {}
        if _without_time(current) == _without_time(status):
            return
        status["lastUpdated"] = when
        updated = copy.deepcopy(claim)
        updated["status"] = status
        await self.client.replace(HOSTCLAIMS, updated, subresource="status")


def _without_time(status: Mapping[str, Any]) -> JsonObject:
    return {k: v for k, v in status.items() if k != "lastUpdated"}
