"""The agent API as an ASGI application: lookup, commands (long poll), results and progress.

Every request is rate-limited per client address (429 with Retry-After) and its body read with
a limit (413 past `MAX_BODY`, never buffered whole first). Host calls need the host's token
(``Authorization: Bearer``): 401 when it is missing or malformed, or when the host holds none
(look up again); 403 when it is not this host's. Refusals are logged with the host and the
client address, never the token; no secret (token, user data) is ever logged.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qs

import anyio
import orjson
import yaml

from metal3 import configdata
from metal3.agentapi.commands import (
    TERMINAL,
    Command,
    CommandName,
    Host,
    command_of,
    plan,
    wait,
)
from metal3.agentapi.hosts import HostIndex, normalize_mac
from metal3.agentapi.openapi import openapi_document
from metal3.agentapi.ratelimit import RateLimit, RateLimiter, retry_after_header
from metal3.agentapi.records import (
    AgentRecord,
    AgentRecords,
    RecordedResult,
    ResultTooLargeError,
    now_rfc3339,
)
from metal3.agentapi.tokens import bearer_token, matches, new_token, token_hash
from metal3.asgi import BodyTooLargeError, Receive, Scope, Send, read_body
from metal3.configdata import ConfigDataError
from metal3.discovery.service import Discovery, DiscoveryOptions, DiscoveryRefusal
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, SECRETS

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
ResultHook = Callable[[str, str], None]  # (namespace, name)

MAX_BODY = 4 * 1024 * 1024
MAX_MACS = 256
# Where an agent may look itself up and get a token: the states in which one runs. Not in
# provisioned or externally provisioned (the host runs its own OS, whose users must never act as
# its agent), nor before inspection or while leaving.
LOOKUP_STATES = frozenset(
    {"inspecting", "preparing", "available", "ready", "provisioning", "deprovisioning"}
)
MAX_ERROR_CHARS = 8192
MAX_DETAIL_CHARS = 1024


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    client: str

    def describe(self) -> str:
        return f"{self.method} {self.path} from {self.client}"


class AgentApi:
    """One instance per operator process; `run` keeps its view of the hosts current."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str | None = None,
        rate_limit: RateLimit | None = None,
        on_result: ResultHook | None = None,
        poll_seconds: float = 30.0,
        max_wait: float = 60.0,
        agent_boot_required: bool = False,
        discovery: DiscoveryOptions | None = None,
    ) -> None:
        """`agent_boot_required`: give a token only to the first lookup after the provisioner
        booted the host into the agent (`AgentRecords.expect_agent`), as the direct provisioner
        does; so whatever else runs on the host (a tenant's OS) cannot act as its agent. Without
        it (the fixture provisioner boots nothing), the host's state alone decides.
        `discovery`: answer a lookup that matches no host with a discovery-only token, good
        for sending the inventory only (`metal3.discovery`); None: 404, as without it (it can
        be switched on and off later: `self.discovery.update`)."""
        self.agent_boot_required = agent_boot_required
        self.client = client
        self.hosts = HostIndex(client, namespace)
        self.records = AgentRecords(client)
        self.limiter = RateLimiter(rate_limit or RateLimit())
        self.on_result = on_result
        self.poll_seconds = poll_seconds
        self.max_wait = max_wait
        # The latest progress report per host uid (memory only: it is only ever a hint).
        self.progress: dict[str, JsonObject] = {}
        self._closing = False
        self.discovery = Discovery(client, self.hosts, discovery)

    async def run(self) -> None:
        await self.hosts.run()

    def close(self) -> None:
        """End every long poll now (shutdown)."""
        self._closing = True
        self.hosts.wake_all()

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = {
            key: values[-1]
            for key, values in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()
        }
        request = Request(scope["method"], scope.get("path") or "/", query, headers, client)
        try:
            delay = self.limiter.acquire(client)
            if delay > 0:
                log.debug("rate limit: refused %s", request.describe())
                raise HttpError(
                    429, "too many requests", {"Retry-After": retry_after_header(delay)}
                )
            status, body = await self._route(request, receive)
            await _respond(send, status, body)
        except HttpError as error:
            await _respond(send, error.status, {"error": error.message}, error.headers)
        except anyio.get_cancelled_exc_class():
            raise
        except ApiError as exc:
            log.warning("%s: the API server failed: %s", request.describe(), exc)
            await _respond(
                send, 503, {"error": "the operator cannot reach its API server; retry"},
                {"Retry-After": "2"},
            )  # fmt: skip
        except Exception:
            log.exception("%s: internal error", request.describe())
            await _respond(send, 500, {"error": "internal error"})

    async def _route(self, request: Request, receive: Receive) -> tuple[int, JsonObject | None]:
        parts = [p for p in request.path.split("/") if p]
        method = request.method
        if parts == ["v1", "openapi.json"]:
            _allow(method, "GET")
            return 200, openapi_document()
        if len(parts) < 2 or parts[0] != "v1":
            raise HttpError(404, f"no such path: {request.path}")
        if not self.hosts.synced:
            raise HttpError(503, "the operator is starting; retry", {"Retry-After": "1"})
        if parts == ["v1", "lookup"]:
            _allow(method, "POST")
            return 200, await self._lookup(request, await _read_json(request, receive))
        if parts == ["v1", "discovery", "inventory"] and self.discovery.enabled:
            _allow(method, "POST")
            return await self._discovered(request, await _read_json(request, receive))
        if len(parts) >= 4 and parts[1] == "hosts":
            uid, action = parts[2], parts[3:]
            if action == ["command"]:
                _allow(method, "GET")
                return 200, await self._command(request, uid)
            if len(action) == 2 and action[0] == "results":
                _allow(method, "POST")
                body = await _read_json(request, receive)
                return 200, await self._result(request, uid, action[1], body)
            if action == ["progress"]:
                _allow(method, "POST")
                await self._progress(request, uid, await _read_json(request, receive))
                return 204, None
        raise HttpError(404, f"no such path: {request.path}")

    # --- lookup --------------------------------------------------------------------------

    async def _lookup(self, request: Request, body: JsonObject) -> JsonObject:
        raw = body.get("mac_addresses")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_MACS:
            raise HttpError(400, f"mac_addresses must be a list of 1 to {MAX_MACS} MAC addresses")
        macs: set[str] = set()
        for item in raw:
            mac = normalize_mac(item) if isinstance(item, str) else None
            if mac is None:
                raise HttpError(400, f"not a MAC address: {str(item)[:40]!r}")
            macs.add(mac)
        for key in ("system_uuid", "serial_number"):
            if body.get(key) is not None and not isinstance(body.get(key), str):
                raise HttpError(400, f"{key} must be a string or null")
        has_token = body.get("has_token")
        if has_token is not None and not isinstance(has_token, bool):
            raise HttpError(400, "has_token must be true, false or null")
        hosts = self.hosts.find_by_macs(macs)
        if not hosts and self.discovery.enabled:
            return {**self._discover(request, macs, body), "poll_seconds": self.poll_seconds}
        if not hosts:
            log.info("lookup from %s: no host has %s", request.client, ", ".join(sorted(macs)))
            raise HttpError(404, "no BareMetalHost has any of these MAC addresses")
        if len(hosts) > 1:
            names = ", ".join(_name(h) for h in hosts)
            log.warning("lookup from %s: the MACs match several hosts: %s", request.client, names)
            raise HttpError(409, "these MAC addresses belong to more than one BareMetalHost")
        host = hosts[0]
        state = Host(host).state
        if state not in LOOKUP_STATES:
            log.warning(
                "lookup from %s: host %s is %r, where no agent runs: refused",
                request.client,
                _name(host),
                state or "new",
            )
            raise HttpError(403, f"the host is {state or 'new'!r}: no agent is expected there")
        refused_unbooted = lost = False

        def issue(record: AgentRecord) -> str | None:
            nonlocal refused_unbooted, lost
            if record.token_hash:
                lost = has_token is False and record.note_token_lost()
                return None
            if self.agent_boot_required and not record.agent_boot_at:
                refused_unbooted = True
                return None
            token, digest = new_token()
            record.issue_token(digest)
            return token

        token = await self.records.update(host, issue)
        if refused_unbooted:
            log.warning(
                "lookup from %s: host %s was not booted into the agent: no token",
                request.client,
                _name(host),
            )
            raise HttpError(403, "the host was not booted into the agent: no token is given")
        log.info(
            "lookup from %s: host %s, %s",
            request.client,
            _name(host),
            "token issued"
            if token
            else "token already held (not given again)"
            + ("; the agent says it has none: noted, for the provisioner" if lost else ""),
        )
        identity = Host(host).identity()
        return {
            "host": {
                "namespace": identity["namespace"],
                "name": identity["name"],
                "uid": identity["uuid"],
            },
            "token": token,
            "poll_seconds": self.poll_seconds,
        }

    # --- discovery -----------------------------------------------------------------------

    def _discover(self, request: Request, macs: set[str], body: JsonObject) -> JsonObject:
        try:
            return self.discovery.lookup(macs, body)
        except DiscoveryRefusal as exc:
            raise _refusal(request, exc) from None

    async def _discovered(self, request: Request, body: JsonObject) -> tuple[int, JsonObject]:
        token = bearer_token(request.headers.get("authorization"))
        try:
            return await self.discovery.inventory(token, body)
        except DiscoveryRefusal as exc:
            raise _refusal(request, exc) from None

    # --- authentication ------------------------------------------------------------------

    async def _authenticate(self, request: Request, uid: str) -> tuple[JsonObject, AgentRecord]:
        token = bearer_token(request.headers.get("authorization"))
        host = self.hosts.by_uid(uid)
        if token is None:
            who = _name(host) if host is not None else f"uid {uid}"
            self._refuse(request, 401, "missing or malformed token", who)
        if host is None:
            raise HttpError(404, "no such host")
        record = await self.records.get(host)
        self._check(request, token, host, record)
        return host, record

    def _check(self, request: Request, token: str, host: JsonObject, record: AgentRecord) -> None:
        if not matches(token, record.token_hash) and record.session_ended(token_hash(token)):
            self._refuse(
                request,
                410,
                "this agent's session is over (the operator powered the host off): stop",
                _name(host),
            )
        if not record.token_hash:
            self._refuse(
                request, 401, "no token is held for this host: look it up again", _name(host)
            )
        if not matches(token, record.token_hash):
            self._refuse(request, 403, "the token is not this host's", _name(host))

    @staticmethod
    def _refuse(request: Request, status: int, reason: str, host: str) -> NoReturn:
        log.warning("refused %s (host %s): %s", request.describe(), host, reason)
        raise HttpError(status, reason)

    # --- commands ------------------------------------------------------------------------

    async def _command(self, request: Request, uid: str) -> JsonObject:
        host, record = await self._authenticate(request, uid)
        try:
            seconds = float(request.query.get("wait", "0") or 0)
        except ValueError:
            raise HttpError(400, "wait must be a number of seconds") from None
        seconds = min(max(seconds, 0.0), self.max_wait)
        deadline = anyio.current_time() + seconds
        token = bearer_token(request.headers.get("authorization")) or ""
        while True:
            changed = self.hosts.changed(host)  # taken first: a change while deciding counts
            command = plan(host, record)
            if command.name in TERMINAL:
                host, record, command = await self._terminal_on_latest(
                    request, token, host, record, command
                )
            remaining = deadline - anyio.current_time()
            if command.name != CommandName.WAIT or remaining <= 0 or self._closing:
                break
            with anyio.move_on_after(remaining):
                await changed.wait()
            fresh = self.hosts.by_uid(uid)
            if fresh is None:
                raise HttpError(404, "no such host")
            host = fresh
            record = await self.records.get(host)
            self._check(request, token, host, record)
        if command.name == CommandName.DEPLOY:
            command = await self._with_config_drive(host, command)
        log.debug("%s: %s %s", _name(host), command.name, command.id)
        return command.to_json()

    async def _terminal_on_latest(
        self, request: Request, token: str, host: JsonObject, record: AgentRecord, command: Command
    ) -> tuple[JsonObject, AgentRecord, Command]:
        """A terminal command (power off, reboot to disk) decided again on the host as the API
        server has it now, not as this API's cache had it. The cache lags the operator's
        writes: an agent booted to deploy that asked just after the host left `available` was
        told the available host's power off, and an agent that powers the machine off itself
        (`--power-action system`) would have done so, undoing the boot. Rare (once per agent
        session at most), so one read of the host costs little."""
        view = Host(host)
        namespace = view.metadata.get("namespace") or ""
        try:
            latest: JsonObject = await self.client.get(
                BAREMETALHOSTS, namespace, view.metadata.get("name") or ""
            )
        except ApiError as exc:
            if exc.not_found:
                raise HttpError(404, "no such host") from None
            raise
        if latest.get("metadata", {}).get("resourceVersion") == view.metadata.get(
            "resourceVersion"
        ):
            return host, record, command
        record = await self.records.get(latest)
        self._check(request, token, latest, record)
        return latest, record, plan(latest, record)

    async def _with_config_drive(self, host: JsonObject, command: Command) -> Command:
        """The deploy command with the config drive's contents from the host's Secrets, read by
        `metal3.configdata`'s rules (the reconciler's too), or a wait saying why they cannot be
        had (the host then also carries that error from its reconcile)."""
        view = Host(host)
        namespace = view.metadata.get("namespace") or ""
        drive: dict[str, Any] = {"userData": None, "networkData": None, "metaData": None}
        for ref in configdata.references(view.spec):
            try:
                name = ref.secret_name(namespace)
                try:
                    secret: JsonObject | None = await self.client.get(SECRETS, namespace, name)
                except ApiError as exc:
                    if not exc.not_found:
                        raise
                    secret = None
                value = configdata.read(ref, secret, namespace)
            except ConfigDataError as exc:
                return self._cannot_deploy(host, str(exc))
            if value is None:
                continue
            if ref.field == "userData":
                drive["userData"] = base64.b64encode(value).decode()
                continue
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = None
            if not isinstance(parsed, dict):
                return self._cannot_deploy(
                    host, f"{ref.field} in Secret {ref.name!r} is not a YAML or JSON object"
                )
            drive[ref.field] = parsed
        return Command(command.id, command.name, {**command.args, "configDrive": drive})

    @staticmethod
    def _cannot_deploy(host: JsonObject, reason: str) -> Command:
        log.warning("%s: cannot deploy: %s", _name(host), reason)
        return wait(Host(host), f"cannot deploy: {reason}")

    # --- results and progress ------------------------------------------------------------

    async def _result(
        self, request: Request, uid: str, command_id: str, body: JsonObject
    ) -> JsonObject:
        host, record = await self._authenticate(request, uid)
        command = command_of(command_id)
        if command is None:
            raise HttpError(400, "malformed command id")
        if command == CommandName.WAIT:
            raise HttpError(400, "wait commands have no result")
        status = body.get("status")
        if status not in ("succeeded", "failed"):
            raise HttpError(400, "status must be 'succeeded' or 'failed'")
        result, error = body.get("result"), body.get("error")
        if result is not None and not isinstance(result, dict):
            raise HttpError(400, "result must be an object or null")
        if error is not None and not isinstance(error, str):
            raise HttpError(400, "error must be a string or null")
        entry = RecordedResult(
            command=command,
            status=status,
            result=result,
            error=error[:MAX_ERROR_CHARS] if error else None,
            recorded_at=now_rfc3339(),
        )

        def record_once(record: AgentRecord) -> bool:
            added = record.add_result(command_id, entry)
            if added and command in TERMINAL and status == "succeeded":
                record.rotate_token()  # the agent is leaving: its token goes with it
            return added

        try:
            recorded = await self.records.update(host, record_once, current=record)
        except ResultTooLargeError as exc:
            raise HttpError(413, f"result too large: {exc}") from None
        log.info(
            "%s: %s %s %s%s",
            _name(host),
            command_id,
            status,
            "recorded" if recorded else "already recorded",
            f" ({entry.error[:200]})" if entry.error and recorded else "",
        )
        if recorded and self.on_result is not None:
            namespace, name = Host(host).identity()["namespace"], Host(host).identity()["name"]
            try:
                self.on_result(namespace, name)
            except Exception:
                log.exception("%s: on_result hook failed", _name(host))
        return {"recorded": recorded}

    async def _progress(self, request: Request, uid: str, body: JsonObject) -> None:
        await self._authenticate(request, uid)
        report: JsonObject = {"at": now_rfc3339()}
        for key, kind in (("command_id", str), ("phase", str), ("detail", str), ("bytes", int)):
            value = body.get(key)
            if value is not None and not isinstance(value, kind):
                raise HttpError(400, f"{key} must be a {kind.__name__} or null")
            report[key] = value[:MAX_DETAIL_CHARS] if isinstance(value, str) else value
        self.progress[uid] = report
        if len(self.progress) > 4 * max(1, self.hosts.count):
            for gone in [u for u in self.progress if self.hosts.by_uid(u) is None]:
                del self.progress[gone]


def _refusal(request: Request, exc: DiscoveryRefusal) -> HttpError:
    """A discovery refusal as the HTTP error it is (logged: 429s at debug, they come in
    floods)."""
    level = logging.DEBUG if exc.status == 429 else logging.INFO
    log.log(level, "discovery: refused %s: %s %s", request.describe(), exc.status, exc.message)
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = retry_after_header(exc.retry_after)
    return HttpError(exc.status, exc.message, headers)


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"method {method} not allowed here", {"Allow": allowed})


async def _read_json(request: Request, receive: Receive) -> JsonObject:
    """The request body as a JSON object, read with the size limit."""
    try:
        raw = await read_body(receive, MAX_BODY, request.headers.get("content-length"))
    except BodyTooLargeError as exc:
        raise HttpError(413, str(exc)) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise HttpError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


def _name(obj: JsonObject) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


async def _respond(
    send: Send, status: int, body: JsonObject | None, headers: dict[str, str] | None = None
) -> None:
    data = b"" if body is None else orjson.dumps(body)
    raw_headers = [(b"content-length", str(len(data)).encode())]
    if body is not None:
        raw_headers.append((b"content-type", b"application/json"))
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": data})
