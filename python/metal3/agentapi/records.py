"""The per-host agent record: what the agent API must remember across operator restarts.

One Secret per host, ``metal3-agent-<host name>`` (type ``metal3.io/agent-record``) in the
host's namespace, owned by the host so it is deleted with it. Its ``data`` holds:

- ``host-uid``: the host it belongs to (a host re-created under the same name starts afresh);
- ``token-sha256``, ``token-id``, ``token-issued-at``: the hash of the agent token now held (no
  key: none is held, the next lookup gets a new one), a random id of that token (terminal
  commands are asked once per token, i.e. once per agent boot) and when it was issued;
- ``result.<command id>``: one JSON document per result (command, status, result, error,
  recordedAt), recorded once. The newest `MAX_RESULTS` are kept, within `MAX_RECORD_BYTES`.

Writes are read-modify-write with the Secret's resourceVersion; a conflict (409) re-reads and
applies the change again, so concurrent requests never lose each other's writes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import random
import secrets as random_bytes
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import orjson

from metal3.api.constants import API_VERSION, BAREMETALHOST_KIND
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import SECRETS

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
T = TypeVar("T")

RECORD_PREFIX = "metal3-agent-"
RECORD_TYPE = "metal3.io/agent-record"
RESULT_PREFIX = "result."
MAX_RESULTS = 32
MAX_ENDED_TOKENS = 4  # sessions ended recently enough that their agent may still call
# Raw JSON bytes of all values together: base64 makes them 4/3 larger, and Kubernetes refuses
# Secrets over 1 MiB.
MAX_RECORD_BYTES = 700 * 1024
MAX_ATTEMPTS = 20


class ResultTooLargeError(Exception):
    """A result that does not fit in the record even on its own."""


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_name(host_name: str) -> str:
    """The record Secret's name for a host (names too long for the prefix are shortened with
    a hash, so two long names never share a record)."""
    name = RECORD_PREFIX + host_name
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(host_name.encode()).hexdigest()[:16]
    return f"{RECORD_PREFIX}{host_name[:200].rstrip('.-')}-{digest}"


@dataclass
class RecordedResult:
    command: str
    status: str  # succeeded | failed
    result: JsonObject | None
    error: str | None
    recorded_at: str

    def to_json(self) -> JsonObject:
        return {
            "command": self.command,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "recordedAt": self.recorded_at,
        }

    @classmethod
    def from_json(cls, raw: JsonObject) -> RecordedResult:
        result = raw.get("result")
        error = raw.get("error")
        return cls(
            command=str(raw.get("command", "")),
            status=str(raw.get("status", "")),
            result=result if isinstance(result, dict) else None,
            error=error if isinstance(error, str) else None,
            recorded_at=str(raw.get("recordedAt", "")),
        )


@dataclass
class AgentRecord:
    host_uid: str = ""
    token_hash: str = ""
    token_id: str = ""
    token_issued_at: str = ""
    # When the provisioner last booted the host into the agent (RFC 3339; "" when the host is
    # not meant to be running one): only a token issued after it can be the agent's own.
    agent_boot_at: str = ""
    # When a lookup said it holds no token while one was held for the booted agent: the agent
    # lost the lookup answer that carried it (an operator killed mid-lookup); "" otherwise.
    token_lost_at: str = ""
    # Hashes of the latest tokens whose agent session the provisioner ended (a power off):
    # an agent still holding one is told its session is over (410), never given a new token
    # (it could be an agent outliving a power off that its BMC reported early).
    ended_tokens: tuple[str, ...] = ()
    results: dict[str, RecordedResult] = field(default_factory=dict)
    # The Secret as read: its resourceVersion ("" when it does not exist yet).
    resource_version: str = ""

    @property
    def exists(self) -> bool:
        return bool(self.resource_version)

    # --- tokens --------------------------------------------------------------------------

    def issue_token(self, token_hash: str) -> None:
        self.token_hash = token_hash
        self.token_id = random_bytes.token_hex(8)
        self.token_issued_at = now_rfc3339()

    def rotate_token(self) -> bool:
        """Forget the token held (the next lookup issues a new one); True if one was held."""
        held = bool(self.token_hash)
        self.token_hash = self.token_id = self.token_issued_at = self.token_lost_at = ""
        return held

    def expect_agent(self) -> None:
        """The provisioner boots the host into the agent now: the token held so far goes, and
        only a token issued from now on is the booted agent's."""
        self.rotate_token()
        self.agent_boot_at = now_rfc3339()

    def agent_gone(self) -> None:
        """The agent's session is over (the host is powered off, or runs its own OS now): its
        token is refused as ended from now on, and no new one is expected."""
        if self.token_hash and self.token_hash not in self.ended_tokens:
            self.ended_tokens = (*self.ended_tokens, self.token_hash)[-MAX_ENDED_TOKENS:]
        self.rotate_token()
        self.agent_boot_at = ""

    def session_ended(self, token_sha256: str) -> bool:
        """Whether the token with this hash belonged to an agent session that was ended."""
        return any(hmac.compare_digest(token_sha256, ended) for ended in self.ended_tokens)

    @property
    def token_from_booted_agent(self) -> bool:
        """A token is held and was issued after the provisioner's last agent boot (so it is not
        one that whatever ran on the host before, e.g. a tenant's OS, got by looking up)."""
        return bool(
            self.token_hash and self.agent_boot_at and self.token_issued_at >= self.agent_boot_at
        )

    def note_token_lost(self) -> bool:
        """A lookup without a token came while the booted agent's token is held: it can only
        be that agent (having lost the answer that carried the token) or an impostor; either
        way the token will not be used. The provisioner boots the agent again (a new token);
        an impostor can cause that reboot, never get a token. True if noted now."""
        if not self.token_from_booted_agent or self.token_lost_at:
            return False
        self.token_lost_at = now_rfc3339()
        return True

    @property
    def token_lost(self) -> bool:
        return bool(self.token_lost_at) and self.token_from_booted_agent

    # --- results -------------------------------------------------------------------------

    def add_result(self, command_id: str, result: RecordedResult) -> bool:
        """Record ``result`` unless one is recorded for ``command_id``; True if recorded.

        Older results make room when the record is full; a result too large on its own raises
        `ResultTooLargeError` and nothing changes.
        """
        if command_id in self.results:
            return False
        size = _size(result)
        if size > MAX_RECORD_BYTES:
            raise ResultTooLargeError(
                f"the result is {size} bytes of JSON; a record holds at most {MAX_RECORD_BYTES}"
            )
        self.results[command_id] = result
        oldest_first = sorted(
            (k for k in self.results if k != command_id),
            key=lambda k: (self.results[k].recorded_at, k),
        )
        total = sum(_size(r) for r in self.results.values())
        while oldest_first and (len(self.results) > MAX_RESULTS or total > MAX_RECORD_BYTES):
            dropped = self.results.pop(oldest_first.pop(0))
            total -= _size(dropped)
        return True

    def latest(self, command: str) -> tuple[str, RecordedResult] | None:
        """The newest result of a command (e.g. ``deploy``), with its command id."""
        found = [(r.recorded_at, k, r) for k, r in self.results.items() if r.command == command]
        if not found:
            return None
        _, key, result = max(found, key=lambda item: (item[0], item[1]))
        return key, result

    # --- the Secret ----------------------------------------------------------------------

    def to_data(self) -> dict[str, str]:
        values: dict[str, bytes] = {"host-uid": self.host_uid.encode()}
        if self.token_hash:
            values["token-sha256"] = self.token_hash.encode()
            values["token-id"] = self.token_id.encode()
            values["token-issued-at"] = self.token_issued_at.encode()
        if self.agent_boot_at:
            values["agent-boot-at"] = self.agent_boot_at.encode()
        if self.token_lost_at:
            values["token-lost-at"] = self.token_lost_at.encode()
        if self.ended_tokens:
            values["ended-tokens"] = ",".join(self.ended_tokens).encode()
        for command_id, result in self.results.items():
            values[RESULT_PREFIX + command_id] = orjson.dumps(result.to_json())
        return {key: base64.b64encode(value).decode() for key, value in sorted(values.items())}

    @classmethod
    def from_secret(cls, secret: JsonObject, host_uid: str) -> AgentRecord:
        """The record in ``secret`` if it belongs to the host ``host_uid``, else an empty one
        that will replace it."""
        version = str((secret.get("metadata") or {}).get("resourceVersion", ""))
        data: dict[str, str] = secret.get("data") or {}
        values = {key: _decode(value) for key, value in data.items()}
        if values.get("host-uid", b"").decode(errors="replace") != host_uid:
            return cls(host_uid=host_uid, resource_version=version)
        results: dict[str, RecordedResult] = {}
        for key, value in values.items():
            if key.startswith(RESULT_PREFIX):
                try:
                    raw = orjson.loads(value)
                except orjson.JSONDecodeError:
                    log.warning("agent record %s: unreadable %s, dropped", _name(secret), key)
                    continue
                if isinstance(raw, dict):
                    results[key.removeprefix(RESULT_PREFIX)] = RecordedResult.from_json(raw)
        return cls(
            host_uid=host_uid,
            token_hash=values.get("token-sha256", b"").decode(errors="replace"),
            token_id=values.get("token-id", b"").decode(errors="replace"),
            token_issued_at=values.get("token-issued-at", b"").decode(errors="replace"),
            agent_boot_at=values.get("agent-boot-at", b"").decode(errors="replace"),
            token_lost_at=values.get("token-lost-at", b"").decode(errors="replace"),
            ended_tokens=tuple(
                t for t in values.get("ended-tokens", b"").decode(errors="replace").split(",") if t
            ),
            results=results,
            resource_version=version,
        )


def _decode(value: str) -> bytes:
    try:
        return base64.b64decode(value)
    except ValueError:
        return b""


def _size(result: RecordedResult) -> int:
    return len(orjson.dumps(result.to_json()))


def _name(obj: JsonObject) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


def _identity(host: JsonObject) -> tuple[str, str, str]:
    metadata = host.get("metadata") or {}
    return metadata.get("namespace") or "", metadata.get("name") or "", metadata.get("uid") or ""


class AgentRecords:
    """Reads and writes hosts' agent records through the API server."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def get(self, host: JsonObject) -> AgentRecord:
        namespace, name, uid = _identity(host)
        try:
            secret = await self.client.get(SECRETS, namespace, record_name(name))
        except ApiError as exc:
            if exc.not_found:
                return AgentRecord(host_uid=uid)
            raise
        return AgentRecord.from_secret(secret, uid)

    async def update(
        self,
        host: JsonObject,
        change: Callable[[AgentRecord], T],
        *,
        current: AgentRecord | None = None,
    ) -> T:
        """Apply ``change`` to the host's record and write it if it changed; returns what
        ``change`` returned. ``change`` may run more than once (after a conflict), each time
        on a freshly read record, so it must only mutate the record it is given. See
        `change` for ``current``."""
        value, _ = await self.change(host, change, current=current)
        return value

    async def change(
        self,
        host: JsonObject,
        change: Callable[[AgentRecord], T],
        *,
        current: AgentRecord | None = None,
    ) -> tuple[T, AgentRecord]:
        """`update`, also returning the record as the API server now has it (changed and
        written, with its new resourceVersion, or unchanged).

        ``current`` is the record as the caller read it (a reconcile, a request), tried first
        instead of a second read. A write from it is safe (a record changed since makes it
        conflict, and the record is read again); a change that is none on it is confirmed on
        a fresh read, since someone may have written what the change undoes. ``current`` is
        changed in place; the caller goes on with the returned record, not with it."""
        record = current
        conflicts = 0
        while conflicts < MAX_ATTEMPTS:
            fresh = record is None
            if record is None:
                record = await self.get(host)
            before = record.to_data()
            value = change(record)
            if record.to_data() == before:
                if not fresh:
                    record = None  # a no-op on an earlier read: look at the record as it is
                    continue
                return value, record
            try:
                await self._write(host, record)
            except ApiError as exc:
                if not (exc.conflict or exc.not_found):
                    raise
                # Someone else wrote (or deleted) it meanwhile: read again, after letting the
                # other writer finish, at a random moment.
                conflicts += 1
                record = None
                await anyio.sleep(random.uniform(0, 0.01 * conflicts))
                continue
            return value, record
        raise ApiError(409, "Conflict", f"agent record of {_name(host)}: too many conflicts")

    async def rotate_token(self, host: JsonObject) -> bool:
        """Forget the host's agent token (for a provisioner that restarts the host's agent);
        True if one was held."""
        return await self.update(host, lambda record: record.rotate_token())

    async def expect_agent(self, host: JsonObject) -> None:
        """See `AgentRecord.expect_agent` (the provisioner, as it boots the agent)."""
        await self.update(host, lambda record: record.expect_agent())

    async def agent_gone(self, host: JsonObject) -> None:
        """See `AgentRecord.agent_gone` (the provisioner, once the host runs its own OS)."""
        await self.update(host, lambda record: record.agent_gone())

    async def _write(self, host: JsonObject, record: AgentRecord) -> None:
        namespace, name, uid = _identity(host)
        body: JsonObject = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": RECORD_TYPE,
            "metadata": {
                "name": record_name(name),
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "metal3-agent-api"},
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": BAREMETALHOST_KIND,
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": False,
                    }
                ],
            },
            "data": record.to_data(),
        }
        if record.exists:
            body["metadata"]["resourceVersion"] = record.resource_version
            written = await self.client.replace(SECRETS, body)
        else:
            written = await self.client.create(SECRETS, body)
        record.resource_version = str((written.get("metadata") or {}).get("resourceVersion", ""))
