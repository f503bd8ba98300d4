"""The claim engine: binds a consumer (a HostClaim, a Metal3Machine) to one available
BareMetalHost that matches its selector, and gives the host back when the consumer goes.

No host is ever claimed twice: a claim writes ``spec.consumerRef`` with the resourceVersion of
the host it read (PUT), so when anything changed the host meanwhile (another worker's claim, in
this process or another one, or just a status write) the server answers 409 and the engine reads
the host again and chooses again. The informer cache may be stale; the precondition is what
makes the choice safe, whatever the concurrency and across operator restarts. A consumer finds
its host again by the host's consumerRef, so a restart never binds it a second host.

The engine's own writes are kept in a small overlay read before the informer cache (a consumer
reconciled again before the watch delivers its write still sees its host), without putting them
into the shared cache, whose handlers must still hear of the change.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from prometheus_client import Counter

from metal3.api.constants import (
    DETACHED_ANNOTATION,
    FAILURE_DOMAIN_LABEL,
    PAUSED_ANNOTATION,
    OperationalStatus,
    ProvisioningState,
)
from metal3.claims.selector import SelectorError, matches, validate
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.informer import Informer, JsonObject, ObjectKey, newer, object_key
from metal3.kube.resources import BAREMETALHOSTS

log = logging.getLogger(__name__)

BINDS = Counter("metal3_claims_binds_total", "Hosts bound to a consumer", ["kind"])
CONFLICTS = Counter(
    "metal3_claims_conflicts_total",
    "Writes to a host refused with 409 (someone changed it first) and retried",
    ["kind"],
)
RELEASES = Counter("metal3_claims_releases_total", "Hosts given back by a consumer", ["kind"])

NO_BAREMETALHOST = "NoBareMetalHost"
"""Binding reason when no host can be bound (upstream's HostClaim reason)."""

WORKLOAD_FIELDS = ("image", "userData", "networkData", "metaData", "customDeploy")
"""Host spec fields a consumer sets and a release clears."""

AVAILABLE_STATES = frozenset({ProvisioningState.AVAILABLE, ProvisioningState.READY})

_MAX_ATTEMPTS = 64  # writes lost in a row before a bind or sync gives up for this reconcile


@dataclass(frozen=True)
class Consumer:
    """What uses a host; written to the host's ``spec.consumerRef``."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str

    def reference(self) -> JsonObject:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
        }

    def refers_to(self, ref: Mapping[str, Any] | None) -> bool:
        """Whether a consumerRef names this consumer: same kind, namespace and name, and, when
        both carry one, the same uid (a re-created object of the same name is another one)."""
        if not ref:
            return False
        if (ref.get("kind"), ref.get("namespace"), ref.get("name")) != (
            self.kind,
            self.namespace,
            self.name,
        ):
            return False
        uid = ref.get("uid")
        return not uid or not self.uid or uid == self.uid


@dataclass(frozen=True)
class HostRequest:
    """What a consumer asks for."""

    consumer: Consumer
    selector: Mapping[str, Any]  # {"matchLabels": {...}, "matchExpressions": [...]}
    host_namespaces: Sequence[str]  # where to look
    failure_domain: str | None = None  # preferred: hosts labelled with it come first
    host_fields: Mapping[str, Any] = field(default_factory=dict)
    """Spec fields written with consumerRef in the same write (optional)."""


@dataclass
class Binding:
    host: JsonObject | None  # the bound host, None when nothing matches
    reason: str | None  # upstream condition reason when host is None
    message: str


def spec_of(host: Mapping[str, Any]) -> JsonObject:
    spec: JsonObject = host.get("spec") or {}
    return spec


def state_of(host: Mapping[str, Any]) -> str:
    return str(((host.get("status") or {}).get("provisioning") or {}).get("state") or "")


def eligible(host: Mapping[str, Any]) -> bool:
    """A host a new consumer may take: available, unconsumed, healthy, not paused or detached,
    not being deleted."""
    metadata = host.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return False
    annotations = metadata.get("annotations") or {}
    if PAUSED_ANNOTATION in annotations or DETACHED_ANNOTATION in annotations:
        return False
    if spec_of(host).get("consumerRef"):
        return False
    status = host.get("status") or {}
    if status.get("errorType"):
        return False
    if status.get("operationalStatus") != OperationalStatus.OK:
        return False
    return state_of(host) in AVAILABLE_STATES


def _version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels: Mapping[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


class ClaimEngine:
    """Chooses, binds, updates and releases hosts for consumers; shared by every face."""

    def __init__(self, client: KubeClient, hosts: Informer) -> None:
        self.client = client
        self.hosts = hosts
        self.binds = 0
        self.conflicts = 0
        self.releases = 0
        self._overlay: dict[ObjectKey, JsonObject] = {}  # our writes the cache may not hold yet
        self._claiming: set[ObjectKey] = set()  # hosts a bind of this process is writing now
        self._uncertain: dict[Consumer, ObjectKey] = {}  # claim writes whose outcome is unknown
        hosts.add_handler(self._on_host)

    # --- reading -------------------------------------------------------------------------

    def _on_host(self, kind: str, obj: JsonObject) -> None:
        key = object_key(obj)
        mine = self._overlay.get(key)
        if mine is not None and (kind == "DELETED" or not newer(_version(mine), _version(obj))):
            del self._overlay[key]

    def _remember(self, obj: JsonObject) -> None:
        key = object_key(obj)
        cached = self.hosts.store.get(*key)
        if cached is None or newer(_version(obj), _version(cached)):
            mine = self._overlay.get(key)
            if mine is None or newer(_version(obj), _version(mine)):
                self._overlay[key] = obj

    def host(self, namespace: str, name: str) -> JsonObject | None:
        """The newest copy this process has of a host."""
        cached = self.hosts.store.get(namespace, name)
        mine = self._overlay.get((namespace, name))
        if mine is None:
            return cached
        if cached is None or newer(_version(mine), _version(cached)):
            return mine
        return cached

    def _hosts_in(self, namespace: str | None) -> list[JsonObject]:
        keys = {object_key(h) for h in self.hosts.store.values(namespace)}
        keys.update(k for k in self._overlay if namespace is None or k[0] == namespace)
        found = (self.host(*key) for key in keys)
        return [h for h in found if h is not None]

    def bound_host(self, consumer: Consumer) -> JsonObject | None:
        """The host whose consumerRef names ``consumer`` (from the cache), or None."""
        for host in self._hosts_in(None):
            if consumer.refers_to(spec_of(host).get("consumerRef")):
                return host
        return None

    def candidates(self, request: HostRequest) -> list[JsonObject]:
        """Hosts ``request`` may bind, best first: its failure domain, then namespace and name.

        Raises :class:`SelectorError` for an invalid selector.
        """
        validate(request.selector)
        found: list[JsonObject] = []
        for namespace in dict.fromkeys(request.host_namespaces):
            for host in self._hosts_in(namespace):
                if eligible(host) and matches(request.selector, _labels(host)):
                    found.append(host)
        domain = request.failure_domain

        def order(host: JsonObject) -> tuple[bool, str, str]:
            in_domain = bool(domain) and _labels(host).get(FAILURE_DOMAIN_LABEL) == domain
            namespace, name = object_key(host)
            return (not in_domain, namespace, name)

        return sorted(found, key=order)

    async def _refresh(self, key: ObjectKey) -> JsonObject | None:
        """Read a host from the API (after a conflict); None when it is gone."""
        try:
            fresh = await self.client.get(BAREMETALHOSTS, *key)
        except ApiError as exc:
            if exc.not_found:
                self._overlay.pop(key, None)
                return None
            raise
        self._remember(fresh)
        return self.host(*key)

    async def _settle(self, consumer: Consumer) -> None:
        """Read again the host of a claim write whose answer was lost (did it succeed?), so
        that neither a bind nor a release decides on a cache that may not show it yet."""
        uncertain = self._uncertain.get(consumer)
        if uncertain is not None:
            await self._refresh(uncertain)
            del self._uncertain[consumer]  # known now (a failed read raised: asked again later)

    # --- binding -------------------------------------------------------------------------

    async def bind(self, request: HostRequest) -> Binding:
        """The consumer's host: the one already bound, else a newly claimed one, else a
        Binding with no host and the reason. Safe to call again at any time."""
        consumer = request.consumer
        await self._settle(consumer)
        host = self.bound_host(consumer)
        if host is not None:
            return Binding(host, None, _bound_message(host))
        try:
            validate(request.selector)
        except SelectorError as exc:
            return Binding(None, NO_BAREMETALHOST, f"invalid hostSelector: {exc}")
        for _ in range(_MAX_ATTEMPTS):
            choices = self.candidates(request)
            free = [h for h in choices if object_key(h) not in self._claiming]
            if not free:
                if choices:  # only hosts another worker is claiming right now: see who wins
                    await anyio.sleep(0.05)
                    continue
                return Binding(None, NO_BAREMETALHOST, _none_message(request))
            bound = await self._claim(request, free[0])
            if bound is not None:
                return Binding(bound, None, _bound_message(bound))
            mine = self.bound_host(consumer)  # e.g. a lost answer that had succeeded
            if mine is not None:
                return Binding(mine, None, _bound_message(mine))
        return Binding(
            None, NO_BAREMETALHOST, f"lost {_MAX_ATTEMPTS} races for hosts in a row; trying again"
        )

    async def _claim(self, request: HostRequest, host: JsonObject) -> JsonObject | None:
        """Write consumerRef on ``host`` under its resourceVersion; None if someone was first."""
        key = object_key(host)
        consumer = request.consumer
        updated = copy.deepcopy(host)
        spec = updated.setdefault("spec", {})
        spec.update(copy.deepcopy(dict(request.host_fields)))
        spec["consumerRef"] = consumer.reference()
        updated.pop("status", None)
        self._claiming.add(key)
        try:
            written = await self.client.replace(BAREMETALHOSTS, updated)
        except ApiError as exc:
            if exc.conflict or exc.not_found:
                self._count_conflict(consumer, key)
                await self._refresh(key)
                return None
            # Another error answer (a 500 or 504 from a timed-out write among them) does not
            # say the write was not applied.
            self._uncertain[consumer] = key
            raise
        except BaseException:
            self._uncertain[consumer] = key  # the server may have applied it
            raise
        finally:
            self._claiming.discard(key)
        self._remember(written)
        self.binds += 1
        BINDS.labels(consumer.kind).inc()
        log.info(
            "%s %s/%s bound to host %s/%s", consumer.kind, consumer.namespace, consumer.name, *key
        )
        return written

    def _count_conflict(self, consumer: Consumer, key: ObjectKey) -> None:
        self.conflicts += 1
        CONFLICTS.labels(consumer.kind).inc()
        log.info(
            "%s %s/%s: conflict on host %s/%s (it changed since it was read); reading it again",
            consumer.kind,
            consumer.namespace,
            consumer.name,
            *key,
        )

    # --- updating ------------------------------------------------------------------------

    async def update_host(
        self,
        consumer: Consumer,
        fields: Mapping[str, Any],
        *,
        labels: Mapping[str, str | None] | None = None,
    ) -> JsonObject | None:
        """Set the bound host's spec ``fields`` (a None value removes the field) and labels,
        writing only when something differs, under the host's resourceVersion (a conflict reads
        it again and retries). None when the consumer has no host."""
        for _ in range(_MAX_ATTEMPTS):
            host = self.bound_host(consumer)
            if host is None:
                return None
            updated = _with_fields(host, fields, labels or {})
            if updated is None:
                return host
            try:
                written = await self.client.replace(BAREMETALHOSTS, updated)
            except ApiError as exc:
                if not exc.conflict:
                    raise
                self._count_conflict(consumer, object_key(host))
                await self._refresh(object_key(host))
                continue
            self._remember(written)
            return written
        raise RuntimeError(
            f"host of {consumer.kind} {consumer.namespace}/{consumer.name} kept "
            "changing; will try again"
        )

    # --- releasing -----------------------------------------------------------------------

    async def release(self, consumer: Consumer) -> bool:
        """Give the consumer's host back: clear the workload, power it off, and once it is
        deprovisioned (back to available, cleaned per its automatedCleaningMode) clear
        consumerRef. True once that is done or there is no host; False: call again later
        (the host's events tell when)."""
        clear: dict[str, Any] = dict.fromkeys(WORKLOAD_FIELDS)
        clear["online"] = False
        await self._settle(consumer)  # a claim write with a lost answer may have bound a host
        host = await self.update_host(consumer, clear)
        if host is None:
            return True
        if (host.get("metadata") or {}).get("deletionTimestamp"):
            return False  # the host's own deletion deprovisions it; done once it is gone
        provisioning = (host.get("status") or {}).get("provisioning") or {}
        if (
            state_of(host) not in AVAILABLE_STATES
            or provisioning.get("image")
            or (provisioning.get("customDeploy"))
        ):
            return False
        freed = copy.deepcopy(host)
        freed["spec"].pop("consumerRef", None)
        freed.pop("status", None)
        try:
            written = await self.client.replace(BAREMETALHOSTS, freed)
        except ApiError as exc:
            if exc.not_found:
                return True
            if not exc.conflict:
                raise
            self._count_conflict(consumer, object_key(host))
            await self._refresh(object_key(host))
            return False
        self._remember(written)
        self.releases += 1
        RELEASES.labels(consumer.kind).inc()
        log.info(
            "%s %s/%s released host %s/%s",
            consumer.kind,
            consumer.namespace,
            consumer.name,
            *object_key(host),
        )
        return True


def _with_fields(
    host: JsonObject, fields: Mapping[str, Any], labels: Mapping[str, str | None]
) -> JsonObject | None:
    """A copy of ``host`` with the spec fields and labels set, or None if nothing changes."""
    spec = spec_of(host)
    current_labels = _labels(host)
    spec_changes = {k: v for k, v in fields.items() if spec.get(k) != v}
    label_changes = {k: v for k, v in labels.items() if current_labels.get(k) != v}
    if not spec_changes and not label_changes:
        return None
    updated = copy.deepcopy(host)
    updated.pop("status", None)
    new_spec = updated.setdefault("spec", {})
    for name, value in spec_changes.items():
        if value is None:
            new_spec.pop(name, None)
        else:
            new_spec[name] = copy.deepcopy(value)
    if label_changes:
        new_labels = updated.setdefault("metadata", {}).setdefault("labels", {})
        for name, value in label_changes.items():
            if value is None:
                new_labels.pop(name, None)
            else:
                new_labels[name] = value
    return updated


def _bound_message(host: JsonObject) -> str:
    namespace, name = object_key(host)
    return f"bound to BareMetalHost {namespace}/{name}"


def _none_message(request: HostRequest) -> str:
    if not request.host_namespaces:
        return "no namespace with BareMetalHosts allows this consumer"
    where = ", ".join(request.host_namespaces)
    return f"no available BareMetalHost matches the selector in namespace(s) {where}"
