"""The BareMetalHost reconciler: reads a host from the cache, runs one state machine step, and
writes the outcome back through the API.

Around the state machine it does what every host needs first: nothing at all while paused; the
finalizer before any hardware action; a status restored from the status annotation; inspection
data taken from the hardwaredetails annotation; the BMC credentials from their Secret. After the
step it writes the status (status subresource, with the object's resourceVersion), annotations the
step consumed, the HardwareData, and finally removes the finalizer once the host is forgotten.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson

from metal3 import configdata
from metal3.api.baremetalhost import BareMetalHost, BareMetalHostStatus
from metal3.api.constants import (
    API_VERSION,
    BAREMETALHOST_FINALIZER,
    BAREMETALHOST_KIND,
    HARDWARE_DETAILS_ANNOTATION,
    HARDWAREDATA_KIND,
    PAUSED_ANNOTATION,
    SECRET_PASSWORD_KEY,
    SECRET_USERNAME_KEY,
    STATUS_ANNOTATION,
    ErrorType,
)
from metal3.api.constants import ProvisioningState as S
from metal3.api.hardware import HardwareDetails
from metal3.api.model import ModelError
from metal3.configdata import ConfigDataError
from metal3.controllers.baremetalhost import metrics
from metal3.controllers.baremetalhost.guard import guarded_provisioner
from metal3.controllers.baremetalhost.state_machine import (
    HostStateMachine,
    Settings,
    StepContext,
    inspection_disabled,
)
from metal3.controllers.baremetalhost.status import (
    BUSY_STATES,
    ensure_status,
    error_backoff,
    now_rfc3339,
    set_error,
    state_of,
    update_conditions,
)
from metal3.kube.client import MERGE_PATCH, ApiError, KubeClient
from metal3.kube.controller import Controller, Result
from metal3.kube.events import EventRecorder
from metal3.kube.informer import JsonObject, ObjectKey, object_key
from metal3.kube.manager import Manager
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA, SECRETS
from metal3.provisioner.base import Credentials, ProvisionerFactory

log = logging.getLogger(__name__)


class CredentialsError(Exception):
    """The host's BMC credentials cannot be used; ``missing``: the Secret does not exist (yet)."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


class BareMetalHostReconciler:
    def __init__(
        self,
        client: KubeClient,
        manager: Manager,
        provisioners: ProvisionerFactory,
        recorder: EventRecorder,
        *,
        settings: Settings | None = None,
        workers: int = 2,
    ) -> None:
        self.client = client
        self.provisioners = provisioners
        self.recorder = recorder
        self.settings = settings or Settings()
        self.hosts = manager.informer(BAREMETALHOSTS)
        self.secrets = manager.informer(SECRETS)
        self.hardware = manager.informer(HARDWAREDATA)
        self.controller = Controller("baremetalhost", self.reconcile, workers=workers)
        manager.add_controller(self.controller)
        self._busy: set[ObjectKey] = set()
        # (namespace, Secret name) -> hosts that reference it, so a Secret event finds them.
        self._secret_users: dict[ObjectKey, set[ObjectKey]] = {}
        self._secrets_of: dict[ObjectKey, set[ObjectKey]] = {}
        self.hosts.add_handler(self._on_host)
        self.secrets.add_handler(self._on_secret)
        self.hardware.add_handler(self._on_hardware_data)

    # --- watches -------------------------------------------------------------------------

    def _track(self, obj: JsonObject, deleted: bool = False) -> None:
        key = object_key(obj)
        state = ((obj.get("status") or {}).get("provisioning") or {}).get("state", "")
        if not deleted and state in BUSY_STATES:
            self._busy.add(key)
        else:
            self._busy.discard(key)

    def _on_host(self, kind: str, obj: JsonObject) -> None:
        deleted = kind == "DELETED"
        self._track(obj, deleted=deleted)
        self._index_secrets(obj, deleted=deleted)
        if deleted:
            # Gone without our finalizer's last step (e.g. it was never added): the
            # provisioner must still let go of the host's sessions.
            uid = (obj.get("metadata") or {}).get("uid")
            if uid:
                self.provisioners.forget(str(uid))
        self.controller.enqueue(object_key(obj))

    def _index_secrets(self, obj: JsonObject, *, deleted: bool) -> None:
        key = object_key(obj)
        namespace = key[0]
        refs: set[ObjectKey] = set()
        if not deleted:
            spec = obj.get("spec") or {}
            refs.add((namespace, (spec.get("bmc") or {}).get("credentialsName") or ""))
            for field in ("userData", "networkData", "metaData"):
                ref = spec.get(field) or {}
                if ref.get("namespace") in (None, "", namespace):  # others are refused anyway
                    refs.add((namespace, ref.get("name") or ""))
            refs.add((namespace, spec.get("preprovisioningNetworkDataName") or ""))
        old = self._secrets_of.pop(key, set())
        for ref in old - refs:
            users = self._secret_users.get(ref)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._secret_users[ref]
        for ref in refs:
            self._secret_users.setdefault(ref, set()).add(key)
        if refs:
            self._secrets_of[key] = refs

    def _on_secret(self, kind: str, obj: JsonObject) -> None:
        for host in self._secret_users.get(object_key(obj), ()):
            self.controller.enqueue(host)

    def _on_hardware_data(self, kind: str, obj: JsonObject) -> None:
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        for owner in (obj.get("metadata") or {}).get("ownerReferences") or []:
            if owner.get("kind") == BAREMETALHOST_KIND:
                self.controller.enqueue((namespace, owner.get("name", "")))

    def busy_elsewhere(self, key: ObjectKey) -> int:
        return len(self._busy) - (1 if key in self._busy else 0)

    # --- reconcile -----------------------------------------------------------------------

    async def reconcile(self, key: ObjectKey) -> Result:
        obj = self.hosts.store.get(*key)
        if obj is None:
            return Result()
        metrics.RECONCILES.labels(*key).inc()
        try:
            return await self._reconcile(key, obj)
        except ApiError as exc:
            return await self._api_error(key, obj, exc)

    async def _api_error(self, key: ObjectKey, obj: JsonObject, exc: ApiError) -> Result:
        """How a reconcile that an API call failed goes on.

        Every failure is retried with the work queue's per-key backoff, which grows until a
        reconcile of the host succeeds: a write the API server refuses for good (422 Invalid,
        400, 403, 404 of a host that still exists...) is refused again on every retry, and
        retrying it at once was a hot loop. A refusal is reported in the log and as a Warning
        Event on the host, not in its status: the status may be what the server refuses.
        """
        if exc.conflict:
            # A stale cache or a concurrent writer: the next look sees the newer version.
            log.debug("%s/%s: %s; reconciling again", *key, exc)
            return Result(backoff=True)
        if exc.not_found and await self._host_gone(key):
            return Result()  # deleted meanwhile; its watch event ends the story
        metrics.RECONCILE_ERRORS.inc()
        if not _permanent(exc):
            raise exc  # server trouble or throttling: the controller logs it and backs off
        failures = self.controller.queue.failures(key) + 1
        message = (
            f"the API server refused a request ({exc}); retrying with backoff "
            f"(failure {failures} in a row)"
        )
        log.warning("%s/%s: %s", *key, message)
        self.recorder.record(obj, "Warning", "APIRequestRefused", message)
        return Result(backoff=True)

    async def _host_gone(self, key: ObjectKey) -> bool:
        try:
            await self.client.get(BAREMETALHOSTS, *key)
        except ApiError as exc:
            return exc.not_found
        return False

    async def _reconcile(self, key: ObjectKey, obj: JsonObject) -> Result:
        # from_json builds new containers, so the host can be changed without touching the cache.
        host = BareMetalHost.from_json(obj)
        metadata = host.metadata
        assert metadata is not None
        annotations = metadata.annotations or {}
        if PAUSED_ANNOTATION in annotations:
            return Result()  # paused: not even the status is touched
        deleting = bool(metadata.deletion_timestamp)
        finalizers = metadata.finalizers or []
        if BAREMETALHOST_FINALIZER not in finalizers:
            if deleting:
                return Result()  # our work is done; the object is going away
            await self._replace(obj, finalizers=[*finalizers, BAREMETALHOST_FINALIZER])
            return Result(requeue_after=0.0)

        if STATUS_ANNOTATION in annotations:
            await self._restore_status(obj, host, annotations[STATUS_ANNOTATION])
            return Result(requeue_after=0.0)
        original_status = host.status.to_json() if host.status else None
        if HARDWARE_DETAILS_ANNOTATION in annotations:
            await self._take_hardware_details(obj, host, annotations[HARDWARE_DETAILS_ANNOTATION])
            return Result(requeue_after=0.0)

        credentials: Credentials | None = None
        credentials_version = ""
        if state_of(host) not in (S.NONE, S.UNMANAGED):
            try:
                credentials, credentials_version = self._credentials(host)
            except CredentialsError as exc:
                if not deleting:
                    return await self._credentials_error(obj, host, original_status, exc)

        ctx = StepContext(
            host=host,
            provisioner=guarded_provisioner(self.provisioners, host),
            credentials=credentials,
            credentials_version=credentials_version,
            settings=self.settings,
            busy_elsewhere=lambda: self.busy_elsewhere(key),
            reserve_slot=lambda: self._busy.add(key),
            user_data=lambda: self._user_data(host),
        )
        outcome = await HostStateMachine(ctx).run()

        latest = obj
        if ctx.hardware is not None:
            await self._write_hardware_data(obj, ctx.hardware)
        latest = await self._save_status(latest, host, original_status)
        if ctx.remove_annotations:
            latest = await self._drop_annotations(latest, ctx.remove_annotations)
        for event_type, reason, message in ctx.events:
            self.recorder.record(latest, event_type, reason, message)
        if ctx.forget_host:
            if metadata.uid:
                self.provisioners.forget(metadata.uid)
            current = latest.get("metadata", {}).get("finalizers") or []
            remaining = [f for f in current if f != BAREMETALHOST_FINALIZER]
            await self._replace(latest, finalizers=remaining)
            log.info("%s/%s: deleted", *key)
            return Result()
        return Result(requeue_after=outcome.requeue_after)

    # --- writes --------------------------------------------------------------------------

    def _cache(self, obj: JsonObject) -> None:
        """Write-through: the next reconcile must not act on the version we just replaced."""
        obj.setdefault("apiVersion", API_VERSION)
        obj.setdefault("kind", BAREMETALHOST_KIND)
        if self.hosts.store.put(obj):
            self._track(obj)

    async def _replace_status(self, obj: JsonObject, status: JsonObject) -> JsonObject:
        """PUT the status subresource (fails with 409 if ``obj`` is stale) and cache the result."""
        result = await self.client.replace(
            BAREMETALHOSTS, {**obj, "status": status}, subresource="status"
        )
        self._cache(result)
        return result

    async def _drop_annotations(self, obj: JsonObject, keys: set[str]) -> JsonObject:
        """Remove annotations (a merge patch setting them to null) and cache the result."""
        patch = {"metadata": {"annotations": dict.fromkeys(keys)}}
        result = await self.client.patch(BAREMETALHOSTS, *object_key(obj), patch)
        self._cache(result)
        return result

    async def _replace(self, obj: JsonObject, *, finalizers: list[str]) -> JsonObject:
        body = {k: v for k, v in obj.items() if k != "status"}
        body["metadata"] = {**obj["metadata"], "finalizers": finalizers}
        result = await self.client.replace(BAREMETALHOSTS, body)
        self._cache(result)
        return result

    async def _save_status(
        self, obj: JsonObject, host: BareMetalHost, original: JsonObject | None
    ) -> JsonObject:
        """Write the status if it changed; on a conflict retry unless someone else changed it."""
        assert host.status is not None
        update_conditions(host, now_rfc3339())
        status = host.status.to_json()
        if status == original:
            return obj
        host.status.last_updated = status["lastUpdated"] = now_rfc3339()
        try:
            return await self._replace_status(obj, status)
        except ApiError as exc:
            if not exc.conflict:
                raise
            fresh = await self.client.get(BAREMETALHOSTS, *object_key(obj))
            if fresh.get("status") != obj.get("status"):
                raise  # someone else wrote the status: decide again from theirs
            return await self._replace_status(fresh, status)

    async def _restore_status(self, obj: JsonObject, host: BareMetalHost, raw: str) -> None:
        """Status from the status annotation (e.g. after a move), used only if none is set."""
        if host.status is None or not (host.status.provisioning and host.status.provisioning.state):
            try:
                restored = BareMetalHostStatus.loads(raw)
            except (ModelError, orjson.JSONDecodeError) as exc:
                log.warning("%s: ignoring unreadable status annotation: %s", _name(obj), exc)
            else:
                if not restored.last_updated:
                    restored.last_updated = now_rfc3339()
                obj = await self._replace_status(obj, restored.to_json())
        await self._drop_annotations(obj, {STATUS_ANNOTATION})

    async def _take_hardware_details(self, obj: JsonObject, host: BareMetalHost, raw: str) -> None:
        """Hardware details given by annotation stand in for inspection when it is disabled."""
        if inspection_disabled(host):
            try:
                details = HardwareDetails.loads(raw)
            except (ModelError, orjson.JSONDecodeError) as exc:
                log.warning("%s: ignoring unreadable hardwaredetails: %s", _name(obj), exc)
            else:
                status = ensure_status(host)
                status.hardware = details
                status.last_updated = now_rfc3339()
                obj = await self._replace_status(obj, status.to_json())
                await self._write_hardware_data(obj, details)
        await self._drop_annotations(obj, {HARDWARE_DETAILS_ANNOTATION})

    async def _write_hardware_data(self, host: JsonObject, details: HardwareDetails) -> None:
        metadata = host["metadata"]
        body = {
            "apiVersion": API_VERSION,
            "kind": HARDWAREDATA_KIND,
            "metadata": {
                "name": metadata["name"],
                "namespace": metadata.get("namespace"),
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": BAREMETALHOST_KIND,
                        "name": metadata["name"],
                        "uid": metadata.get("uid"),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {"hardware": details.to_json()},
        }
        try:
            await self.client.create(HARDWAREDATA, body)
        except ApiError as exc:
            if not exc.conflict:
                raise
            await self.client.patch(
                HARDWAREDATA,
                metadata.get("namespace"),
                metadata["name"],
                {"spec": {"hardware": details.to_json()}},
                content_type=MERGE_PATCH,
            )

    # --- credentials and user data -------------------------------------------------------

    def _secret(self, namespace: str, name: str) -> JsonObject | None:
        return self.secrets.store.get(namespace, name)

    def _credentials(self, host: BareMetalHost) -> tuple[Credentials, str]:
        assert host.metadata is not None
        spec = host.spec
        namespace = host.metadata.namespace or ""
        if spec is None or spec.bmc is None or not spec.bmc.address:
            raise CredentialsError("missing BMC address", missing=False)
        name = spec.bmc.credentials_name
        if not name:
            raise CredentialsError(
                "missing BMC credentials: spec.bmc.credentialsName", missing=False
            )
        secret = self._secret(namespace, name)
        if secret is None:
            raise CredentialsError(f"BMC credentials Secret {name!r} not found", missing=True)
        values = {}
        for key in (SECRET_USERNAME_KEY, SECRET_PASSWORD_KEY):
            value = secret_value(secret, key)
            if value is None or not value.strip():
                raise CredentialsError(
                    f"BMC credentials Secret {name!r} has no {key}", missing=False
                )
            values[key] = value.strip()
        version = str(secret.get("metadata", {}).get("resourceVersion", ""))
        return Credentials(values[SECRET_USERNAME_KEY], values[SECRET_PASSWORD_KEY]), version

    async def _credentials_error(
        self,
        obj: JsonObject,
        host: BareMetalHost,
        original: JsonObject | None,
        error: CredentialsError,
    ) -> Result:
        (metrics.CREDENTIALS_MISSING if error.missing else metrics.CREDENTIALS_INVALID).inc()
        status = host.status
        assert status is not None
        message = str(error)
        if status.error_type != ErrorType.REGISTRATION.value or status.error_message != message:
            set_error(host, ErrorType.REGISTRATION, message)
            latest = await self._save_status(obj, host, original)
            self.recorder.record(latest, "Warning", "BMCCredentialError", message)
        if error.missing:  # it may be created later; look again (watching it helps too)
            return Result(
                requeue_after=error_backoff(
                    status.error_count or 1, self.settings.error_backoff_unit
                )
            )
        return Result()  # the user must fix the Secret; its change will trigger a reconcile

    async def _user_data(self, host: BareMetalHost) -> tuple[str | None, str | None, str | None]:
        """userData, networkData and metaData from their Secrets, by `metal3.configdata`'s rules
        (the agent API reads the config drive by the same ones). A missing Secret, or one
        without the key, raises ConfigDataError, and the host waits in provisioning until it
        appears (its watch wakes the host)."""
        assert host.metadata is not None
        namespace = host.metadata.namespace or ""
        found: dict[str, str | None] = {}
        for ref in configdata.references(host.to_json().get("spec") or {}):
            secret = self._secret(namespace, ref.secret_name(namespace))
            raw = configdata.read(ref, secret, namespace)
            try:
                found[ref.field] = raw.decode() if raw is not None else None
            except UnicodeDecodeError:  # never the content: it is the secret
                raise ConfigDataError(ref.field, ref.name, "the value is not UTF-8 text") from None
        return found.get("userData"), found.get("networkData"), found.get("metaData")


def has_key(secret: JsonObject, key: str) -> bool:
    return key in (secret.get("data") or {}) or key in (secret.get("stringData") or {})


def secret_value(secret: JsonObject, key: str) -> str | None:
    """A Secret's value for ``key`` (``data`` is base64; ``stringData`` is taken as is)."""
    data: dict[str, Any] = secret.get("data") or {}
    if key in data:
        try:
            return base64.b64decode(data[key]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
    string_data: dict[str, Any] = secret.get("stringData") or {}
    value = string_data.get(key)
    return value if isinstance(value, str) else None


def _permanent(exc: ApiError) -> bool:
    """A refusal that repeats until something changes (4xx but 409 Conflict and 429 Throttled)."""
    return 400 <= exc.status < 500 and exc.status not in (409, 429)


def _name(obj: JsonObject) -> str:
    namespace, name = object_key(obj)
    return f"{namespace}/{name}"
