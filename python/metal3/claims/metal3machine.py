"""The Metal3Machine controller: Cluster API's machine, as Cluster API provider Metal3 (CAPM3)
defines it, run on a BareMetalHost chosen and held by the claim engine.

One reconcile of a Metal3Machine:

- Deleted: the engine releases its host (workload fields cleared, deprovisioned with the host's
  cleaning mode, consumerRef cleared); the finalizer
  ``metal3machine.infrastructure.cluster.x-k8s.io`` is held until the engine says the host is free.
- Owned by a Cluster API ``Machine`` (ownerReference kind Machine, apiVersion
  ``cluster.x-k8s.io/*``): nothing is bound until ``Machine.spec.bootstrap.dataSecretName`` is
  set (condition AssociateBMH False, reason WaitingForBootstrapReady; the Machine is read again
  every ``machine_poll`` seconds); that Secret (key ``value``, as Cluster API's bootstrap
  providers write it) is then the host's user data, instead of ``spec.userData``. When the API
  server does not serve Machines at all (no Cluster API installed), the owner reference is
  ignored and the Metal3Machine stands alone.
- A host in the Metal3Machine's own namespace that matches ``spec.hostSelector`` is bound
  (``spec.failureDomain``, else the Machine's, is the preferred failure domain), then given
  the image or customDeploy, the userData/metaData/networkData Secret references,
  ``automatedCleaningMode`` when set, and ``online: true``.
- Status: ``addresses`` from the host's inspected NICs (InternalIP) and host name (Hostname,
  InternalDNS), as CAPM3 derives them; once the host is provisioned with this image,
  ``spec.providerID`` ``metal3://NAMESPACE/HOST/NAME`` and ``status.ready``; the owning
  Machine then gets the same ``spec.providerID`` and ``status.addresses`` (what Cluster API's
  Machine controller copies from the infrastructure machine, so the values always agree).
- ``failureReason: CreateError`` / ``failureMessage``, which Cluster API treats as terminal, are
  set only when the host gave up on this image: a provisioning error after
  ``max_provisioning_retries`` failed attempts in a row (the host controller's own limit, after
  which it does not retry until the image changes). Errors the host retries by itself (a failed
  attempt below the limit, a user data Secret not there yet, BMC trouble) only show in the
  Ready condition's message. Once set, failureReason and failureMessage stay, and the
  Metal3Machine is left alone until deleted.
- No matching host, or a spec this controller cannot serve (neither image nor customDeploy, an
  operator it does not know, another ``hostSelector.namespace``): AssociateBMH False, reason
  AssociateBMHFailed, saying which.
- Hosts are followed through their cache (every version stored, also the host controller's
  own writes, which reach no informer handler): a change of a bound host reconciles its
  Metal3Machine, a free host the Metal3Machines no host matched yet; timers
  (:class:`Metal3MachineSettings`) are only a backstop.

Not done (CAPM3 does): Metal3DataTemplate rendering (``spec.dataTemplate`` is accepted and
ignored), pausing, node reuse, and setting the providerID on the workload cluster's Node.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from metal3.api.constants import (
    CLUSTER_API_GROUP,
    INFRASTRUCTURE_API_VERSION,
    INFRASTRUCTURE_GROUP,
    MACHINE_KIND,
    METAL3_PROVIDER_ID_PREFIX,
    METAL3MACHINE_FINALIZER,
    METAL3MACHINE_KIND,
    ErrorType,
    MachineAddressType,
    MachineStatusError,
    Metal3MachineCondition,
    Metal3MachineReason,
    ProvisioningState,
)
from metal3.claims.engine import ClaimEngine, Consumer, HostRequest
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.controller import Controller, Result
from metal3.kube.informer import JsonObject, ObjectKey, object_key
from metal3.kube.manager import Manager
from metal3.kube.resources import BAREMETALHOSTS, MACHINES, METAL3MACHINES, Resource

log = logging.getLogger(__name__)

# Our own Ready reasons (CAPM3 has none for these): the bound host is not yet provisioned with
# the machine's workload; it gave up provisioning it.
HOST_PROVISIONING_REASON = "WaitingForHostProvisioned"
HOST_FAILED_REASON = "HostProvisioningFailed"

# CAPM3's hostSelector operators (Kubernetes `selection.Operator`) -> LabelSelector operators.
_OPERATORS = {
    "in": "In",
    "=": "In",
    "==": "In",
    "notin": "NotIn",
    "!=": "NotIn",
    "exists": "Exists",
    "!": "DoesNotExist",
    "In": "In",
    "NotIn": "NotIn",
    "Exists": "Exists",
    "DoesNotExist": "DoesNotExist",
}


@dataclass(frozen=True)
class Metal3MachineSettings:
    """The host controller's limit, and polls (host changes wake a Metal3Machine at once; the
    host timers are a backstop)."""

    max_provisioning_retries: int = 5  # the host controller's limit (Settings of the operator)
    machine_poll: float = 2.0  # s between reads of a Machine whose bootstrap data is unset
    host_poll: float = 10.0  # s between looks at a bound host not yet provisioned, or releasing
    no_host_retry: float = 30.0  # s between looks for a host when none matched


class SpecError(ValueError):
    """The Metal3Machine asks for something this controller cannot do; the message says what."""


def selector_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    """CAPM3's ``hostSelector`` as a Kubernetes LabelSelector (the engine's form)."""
    host_selector = spec.get("hostSelector") or {}
    expressions = []
    for requirement in host_selector.get("matchExpressions") or []:
        operator = _OPERATORS.get(str(requirement.get("operator", "")))
        if operator is None:
            raise SpecError(
                f"hostSelector operator {requirement.get('operator')!r} is not supported "
                f"(use one of {', '.join(sorted(set(_OPERATORS)))})"
            )
        values = [str(v) for v in requirement.get("values") or []]
        if requirement.get("operator") in ("=", "==", "!=") and len(values) != 1:
            raise SpecError(f"hostSelector operator {requirement['operator']!r} needs one value")
        expressions.append(
            {"key": requirement.get("key", ""), "operator": operator, "values": values}
        )
    selector: dict[str, Any] = {"matchLabels": dict(host_selector.get("matchLabels") or {})}
    if expressions:
        selector["matchExpressions"] = expressions
    return selector


def provider_id(namespace: str, host: str, name: str) -> str:
    return f"{METAL3_PROVIDER_ID_PREFIX}{namespace}/{host}/{name}"


def addresses_of(host: JsonObject) -> list[dict[str, str]]:
    """The host's addresses as CAPM3 reports them: each inspected NIC's IP as InternalIP, the
    host name as Hostname and InternalDNS."""
    hardware = (host.get("status") or {}).get("hardware") or {}
    found: list[dict[str, str]] = []
    for nic in hardware.get("nics") or []:
        if nic.get("ip"):
            found.append({"type": MachineAddressType.INTERNAL_IP.value, "address": nic["ip"]})
    if hardware.get("hostname"):
        for kind in (MachineAddressType.HOSTNAME, MachineAddressType.INTERNAL_DNS):
            found.append({"type": kind.value, "address": hardware["hostname"]})
    unique: list[dict[str, str]] = []
    for address in found:
        if address not in unique:
            unique.append(address)
    return unique


def owner_machine(obj: JsonObject) -> JsonObject | None:
    """The Cluster API Machine owner reference, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        group = str(ref.get("apiVersion", "")).partition("/")[0]
        if ref.get("kind") == MACHINE_KIND and group == CLUSTER_API_GROUP:
            return dict(ref)
    return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    status: JsonObject,
    type_: str,
    ok: bool,
    reason: str = "",
    message: str = "",
    severity: str = "Info",
) -> None:
    """A Cluster API v1beta1 condition: the transition time changes only with the status."""
    conditions: list[JsonObject] = list(status.get("conditions") or [])
    value = "True" if ok else "False"
    new: JsonObject = {"type": str(type_), "status": value}
    if not ok:
        new["severity"] = severity
        if reason:
            new["reason"] = str(reason)
        if message:
            new["message"] = message
    for i, old in enumerate(conditions):
        if old.get("type") == type_:
            same = old.get("status") == value
            new["lastTransitionTime"] = old.get("lastTransitionTime") if same else _now()
            conditions[i] = new
            break
    else:
        new["lastTransitionTime"] = _now()
        conditions.append(new)
    status["conditions"] = conditions


async def resource_served(client: KubeClient, resource: Resource, namespace: str = "") -> bool:
    """Whether the API server serves ``resource`` at all (its CRD installed): a list of one."""
    try:
        await client.request("GET", resource.path(namespace or None), query={"limit": 1})
    except ApiError as exc:
        if exc.not_found:
            return False
        raise
    return True


class Metal3MachineReconciler:
    def __init__(
        self,
        client: KubeClient,
        manager: Manager,
        engine: ClaimEngine,
        *,
        settings: Metal3MachineSettings | None = None,
        workers: int = 2,
    ) -> None:
        self.client = client
        self.engine = engine
        self.settings = settings or Metal3MachineSettings()
        self.machines = manager.informer(METAL3MACHINES)
        self.hosts = manager.informer(BAREMETALHOSTS)
        self.controller = Controller("metal3machine", self.reconcile, workers=workers)
        manager.add_controller(self.controller)
        self._waiting: set[ObjectKey] = set()  # Metal3Machines no host matched yet
        self.machines.add_handler(self._on_machine)
        self.hosts.add_handler(self._on_host)  # deletions, and versions from the watch
        self.hosts.store.add_listener(self._on_host_stored)  # every version cached

    # --- watches -------------------------------------------------------------------------

    def _on_machine(self, kind: str, obj: JsonObject) -> None:
        if kind == "DELETED":
            self._waiting.discard(object_key(obj))
        self.controller.enqueue(object_key(obj))

    def _on_host_stored(self, obj: JsonObject) -> None:
        self._on_host("MODIFIED", obj)

    def _on_host(self, kind: str, obj: JsonObject) -> None:
        """A host of ours changed: reconcile its Metal3Machine; a free one: the waiting ones."""
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        ref = (obj.get("spec") or {}).get("consumerRef") or {}
        group = str(ref.get("apiVersion", "")).partition("/")[0]
        if ref.get("kind") == METAL3MACHINE_KIND and group == INFRASTRUCTURE_GROUP:
            self.controller.enqueue((ref.get("namespace") or namespace, ref.get("name") or ""))
        elif not ref:
            for key in list(self._waiting):
                if key[0] == namespace:
                    self.controller.enqueue(key)

    # --- reconcile -----------------------------------------------------------------------

    async def reconcile(self, key: ObjectKey) -> Result:
        obj = self.machines.store.get(*key)
        if obj is None:
            self._waiting.discard(key)
            return Result()
        try:
            return await self._reconcile(key, obj)
        except ApiError as exc:
            if exc.conflict:  # a stale cache or a concurrent writer: look again
                log.debug("%s/%s: %s; reconciling again", *key, exc)
                return Result(backoff=True)
            raise

    def _consumer(self, obj: JsonObject) -> Consumer:
        metadata = obj["metadata"]
        return Consumer(
            api_version=INFRASTRUCTURE_API_VERSION,
            kind=METAL3MACHINE_KIND,
            namespace=metadata.get("namespace") or "",
            name=metadata["name"],
            uid=str(metadata.get("uid") or ""),
        )

    async def _reconcile(self, key: ObjectKey, obj: JsonObject) -> Result:
        metadata = obj.get("metadata") or {}
        finalizers: list[str] = list(metadata.get("finalizers") or [])
        consumer = self._consumer(obj)
        if metadata.get("deletionTimestamp"):
            self._waiting.discard(key)
            return await self._delete(obj, consumer, finalizers)
        if METAL3MACHINE_FINALIZER not in finalizers:
            obj = await self._set_finalizers(obj, [*finalizers, METAL3MACHINE_FINALIZER])
        status: JsonObject = dict(obj.get("status") or {})
        if status.get("failureReason"):
            return Result()  # terminal for Cluster API: nothing more until deleted
        spec: JsonObject = obj.get("spec") or {}

        machine, waiting = await self._owning_machine(obj)
        if waiting is not None:
            set_condition(
                status,
                Metal3MachineCondition.ASSOCIATE_BMH,
                False,
                Metal3MachineReason.WAITING_FOR_BOOTSTRAP_READY,
                waiting,
            )
            status["ready"] = False
            self._summarise(status, ready=False)
            await self._write_status(obj, status)
            return Result(requeue_after=self.settings.machine_poll)

        host = self.engine.bound_host(consumer)
        if host is None:
            try:
                host, why = await self._bind(spec, machine, consumer)
            except SpecError as exc:
                self._waiting.discard(key)
                return await self._not_associated(obj, status, str(exc), Result())
            if host is None:
                self._waiting.add(key)
                retry = Result(requeue_after=self.settings.no_host_retry)
                return await self._not_associated(obj, status, why, retry)
        self._waiting.discard(key)
        return await self._bound(obj, status, spec, machine, host)

    async def _bind(
        self, spec: JsonObject, machine: JsonObject | None, consumer: Consumer
    ) -> tuple[JsonObject | None, str]:
        """The host the engine binds (None, and why, when none matches)."""
        namespace = consumer.namespace
        if not spec.get("image") and not spec.get("customDeploy"):
            raise SpecError("spec.image or spec.customDeploy is required")
        wanted = (spec.get("hostSelector") or {}).get("namespace")
        if wanted and wanted != namespace:
            raise SpecError(
                f"hostSelector.namespace {wanted!r}: only hosts in the Metal3Machine's own "
                f"namespace {namespace!r} can be bound"
            )
        if spec.get("providerID"):
            raise SpecError(
                f"the host named by providerID {spec['providerID']!r} is gone or no longer ours"
            )
        failure_domain = spec.get("failureDomain") or (
            ((machine or {}).get("spec") or {}).get("failureDomain")
        )
        workload = self._workload(namespace, spec, machine)
        request = HostRequest(
            consumer=consumer,
            selector=selector_of(spec),
            host_namespaces=[namespace],
            failure_domain=failure_domain or None,
            host_fields={k: v for k, v in workload.items() if v is not None},
        )
        binding = await self.engine.bind(request)
        reason = f"{binding.reason}: " if binding.reason else ""
        return binding.host, f"{reason}{binding.message}" or "no matching host is available"

    async def _not_associated(
        self, obj: JsonObject, status: JsonObject, message: str, result: Result
    ) -> Result:
        set_condition(
            status,
            Metal3MachineCondition.ASSOCIATE_BMH,
            False,
            Metal3MachineReason.ASSOCIATE_BMH_FAILED,
            message,
            severity="Error",  # CAPM3's severity for AssociateBMHFailed
        )
        status["ready"] = False
        self._summarise(status, ready=False)
        await self._write_status(obj, status)
        return result

    async def _owning_machine(self, obj: JsonObject) -> tuple[JsonObject | None, str | None]:
        """The owning Cluster API Machine (None when there is none, or Cluster API is not
        installed), and why to wait (None: go on)."""
        ref = owner_machine(obj)
        if ref is None:
            return None, None
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        _, _, version = str(ref["apiVersion"]).partition("/")
        resource = replace(MACHINES, version=version or MACHINES.version)
        name = f"{namespace}/{ref.get('name')}"
        try:
            machine = await self.client.get(resource, namespace, str(ref.get("name")))
        except ApiError as exc:
            if not exc.not_found:
                raise
            if not await resource_served(self.client, resource, namespace):
                return None, None  # no Cluster API here: the Metal3Machine stands alone
            return None, f"the owning Machine {name} is not found"
        if ref.get("uid") and (machine.get("metadata") or {}).get("uid") != ref["uid"]:
            return None, f"the owning Machine {name} is another object than the owner reference"
        bootstrap = (machine.get("spec") or {}).get("bootstrap") or {}
        if not bootstrap.get("dataSecretName"):
            return machine, f"Machine {name}: spec.bootstrap.dataSecretName is not set yet"
        return machine, None

    async def _bound(
        self,
        obj: JsonObject,
        status: JsonObject,
        spec: JsonObject,
        machine: JsonObject | None,
        host: JsonObject,
    ) -> Result:
        namespace, name = object_key(obj)
        host_name = host["metadata"]["name"]
        workload = self._workload(namespace, spec, machine)
        host_spec = host.get("spec") or {}
        changes = any(host_spec.get(field) != value for field, value in workload.items())
        if changes:
            updated = await self.engine.update_host(self._consumer(obj), workload)
            if updated is None:  # no longer ours (the cache moved on): decide again
                return Result(backoff=True)
            host = updated
        set_condition(status, Metal3MachineCondition.ASSOCIATE_BMH, True)
        for field, status_field in (("userData", "userData"), ("metaData", "metaData"),
                                    ("networkData", "networkData")):  # fmt: skip
            if workload.get(field):
                status[status_field] = workload[field]
            else:
                status.pop(status_field, None)
        addresses = addresses_of(host)
        if addresses:
            status["addresses"] = addresses
        failure = self._permanent_failure(host, workload)
        if failure is not None:
            status["failureReason"] = MachineStatusError.CREATE.value
            status["failureMessage"] = failure
            status["ready"] = False
            self._summarise(status, ready=False, reason=HOST_FAILED_REASON, message=failure)
            await self._write_status(obj, status)
            return Result()
        ready = not changes and _provisioned_with(host, workload)
        if ready:
            wanted_id = provider_id(namespace, host_name, name)
            if spec.get("providerID") != wanted_id:
                obj = await self._patch_spec(obj, {"providerID": wanted_id})
            if machine is not None:
                await self._update_machine(machine, wanted_id, addresses)
        status["ready"] = ready
        host_status = host.get("status") or {}
        state = (host_status.get("provisioning") or {}).get("state", "")
        message = f"host {namespace}/{host_name} is {state or 'not yet registered'}"
        if host_status.get("errorType"):  # one the host retries by itself
            message += f" ({host_status['errorType']}: {host_status.get('errorMessage', '')})"
        self._summarise(status, ready=ready, reason=HOST_PROVISIONING_REASON, message=message)
        await self._write_status(obj, status)
        return Result() if ready else Result(requeue_after=self.settings.host_poll)

    def _workload(
        self, namespace: str, spec: JsonObject, machine: JsonObject | None
    ) -> dict[str, Any]:
        """The host spec fields this Metal3Machine sets (None: cleared)."""
        image = spec.get("image")
        host_image = None
        if image:
            host_image = {"url": image.get("url")}
            for field in ("checksum", "checksumType", "format"):
                if image.get(field):
                    host_image[field] = image[field]
        user_data = spec.get("userData")
        if machine is not None:
            secret = ((machine.get("spec") or {}).get("bootstrap") or {}).get("dataSecretName")
            user_data = {"name": secret, "namespace": namespace}
        workload: dict[str, Any] = {
            "image": host_image,
            "customDeploy": spec.get("customDeploy") or None,
            "userData": _secret_ref(user_data, namespace),
            "metaData": _secret_ref(spec.get("metaData"), namespace),
            "networkData": _secret_ref(spec.get("networkData"), namespace),
            "online": True,
        }
        if spec.get("automatedCleaningMode"):
            workload["automatedCleaningMode"] = spec["automatedCleaningMode"]
        return workload

    def _permanent_failure(self, host: JsonObject, workload: Mapping[str, Any]) -> str | None:
        """A message when the host gave up provisioning this workload (see the module doc)."""
        status = host.get("status") or {}
        if status.get("errorType") != ErrorType.PROVISIONING.value:
            return None
        if (status.get("provisioningFailCount") or 0) < self.settings.max_provisioning_retries:
            return None
        attempted = (status.get("lastAttemptedImage") or {}).get("url")
        wanted = (workload.get("image") or {}).get("url")
        if wanted and attempted != wanted:
            return None
        metadata = host.get("metadata") or {}
        return (
            f"host {metadata.get('namespace')}/{metadata.get('name')} failed provisioning "
            f"{status.get('provisioningFailCount')} times in a row: "
            f"{status.get('errorMessage', '')}"
        )

    @staticmethod
    def _summarise(status: JsonObject, *, ready: bool, reason: str = "", message: str = "") -> None:
        """Ready: True once ready; else the AssociateBMH condition's reason while it is False."""
        if ready:
            set_condition(status, Metal3MachineCondition.READY, True)
            return
        for condition in status.get("conditions") or []:
            if condition.get("type") == Metal3MachineCondition.ASSOCIATE_BMH and (
                condition.get("status") == "False"
            ):
                reason = condition.get("reason", reason)
                message = condition.get("message", message)
                break
        set_condition(status, Metal3MachineCondition.READY, False, reason, message)

    async def _delete(self, obj: JsonObject, consumer: Consumer, finalizers: list[str]) -> Result:
        if METAL3MACHINE_FINALIZER not in finalizers:
            return Result()
        released = await self.engine.release(consumer)
        if not released:
            host = self.engine.bound_host(consumer)
            status: JsonObject = dict(obj.get("status") or {})
            where = f" {consumer.namespace}/{host['metadata']['name']}" if host else ""
            set_condition(
                status,
                Metal3MachineCondition.READY,
                False,
                Metal3MachineReason.DELETING,
                f"releasing host{where}: deprovisioning, then freeing it",
            )
            await self._write_status(obj, status)
            return Result(requeue_after=self.settings.host_poll)
        await self._set_finalizers(obj, [f for f in finalizers if f != METAL3MACHINE_FINALIZER])
        return Result()

    # --- writes ----------------------------------------------------------------------------

    def _cache(self, result: JsonObject) -> JsonObject:
        result.setdefault("apiVersion", INFRASTRUCTURE_API_VERSION)
        result.setdefault("kind", METAL3MACHINE_KIND)
        self.machines.store.put(result)
        return result

    async def _set_finalizers(self, obj: JsonObject, finalizers: list[str]) -> JsonObject:
        """A merge patch carrying the resourceVersion: 409 when the cache was stale."""
        metadata = obj["metadata"]
        patch = {
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": metadata.get("resourceVersion"),
            }
        }
        result = await self.client.patch(
            METAL3MACHINES, metadata.get("namespace"), metadata["name"], patch
        )
        return self._cache(result)

    async def _patch_spec(self, obj: JsonObject, fields: JsonObject) -> JsonObject:
        metadata = obj["metadata"]
        patch = {"metadata": {"resourceVersion": metadata.get("resourceVersion")}, "spec": fields}
        result = await self.client.patch(
            METAL3MACHINES, metadata.get("namespace"), metadata["name"], patch
        )
        return self._cache(result)

    async def _write_status(self, obj: JsonObject, status: JsonObject) -> JsonObject:
        """PUT the status subresource when it changed (lastUpdated aside)."""
        old = {k: v for k, v in (obj.get("status") or {}).items() if k != "lastUpdated"}
        new = {k: v for k, v in status.items() if k != "lastUpdated"}
        if old == new:
            return obj
        new["lastUpdated"] = _now()
        result = await self.client.replace(
            METAL3MACHINES, {**obj, "status": new}, subresource="status"
        )
        return self._cache(result)

    async def _update_machine(
        self, machine: JsonObject, wanted_id: str, addresses: list[dict[str, str]]
    ) -> None:
        """Machine.spec.providerID and status.addresses, as Cluster API copies them from us."""
        metadata = machine["metadata"]
        namespace, name = metadata.get("namespace"), metadata["name"]
        group_version = str(machine.get("apiVersion") or MACHINES.api_version)
        resource = replace(MACHINES, version=group_version.partition("/")[2] or MACHINES.version)
        if (machine.get("spec") or {}).get("providerID") != wanted_id:
            await self.client.patch(resource, namespace, name, {"spec": {"providerID": wanted_id}})
        if addresses and (machine.get("status") or {}).get("addresses") != addresses:
            await self.client.patch(
                resource, namespace, name, {"status": {"addresses": addresses}},
                subresource="status",
            )  # fmt: skip


def _secret_ref(ref: Any, namespace: str) -> dict[str, str] | None:
    """A Secret reference as the host takes it: by name, in the (shared) namespace."""
    if not isinstance(ref, Mapping) or not ref.get("name"):
        return None
    return {"name": str(ref["name"]), "namespace": str(ref.get("namespace") or namespace)}


def _provisioned_with(host: JsonObject, workload: Mapping[str, Any]) -> bool:
    """The host is provisioned, with this image (or custom deploy method)."""
    provisioning = (host.get("status") or {}).get("provisioning") or {}
    if provisioning.get("state") != ProvisioningState.PROVISIONED.value:
        return False
    image = workload.get("image")
    if image:
        return bool((provisioning.get("image") or {}).get("url") == image.get("url"))
    deploy = workload.get("customDeploy")
    if deploy:
        return bool((provisioning.get("customDeploy") or {}).get("method") == deploy.get("method"))
    return False
