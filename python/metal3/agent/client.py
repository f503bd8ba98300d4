"""The agent's client for the operator's agent API (see docs/agent-protocol.md).

Plain HTTPS with the standard library (`http.client`, `ssl`): the agent runs in a small ramdisk
and only ever dials out. The operator's certificate is checked against the CA the agent was
given at boot (a file, or PEM text), host name included; there is no plain-HTTP mode.

Every failure is an `AgentApiError`: ``status`` is the HTTP status (None when the operator could
not be reached), ``retryable`` says whether trying again later may help (no answer, 5xx, 429),
and ``retry_after`` is the operator's Retry-After. `retrying` retries those with backoff.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import orjson

from metal3.agent.errors import AgentError

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]
T = TypeVar("T")


class AgentApiError(AgentError):
    def __init__(self, status: int | None, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status == 429


@dataclass(frozen=True)
class Lookup:
    """The lookup's answer: the host, and its token if this was the first lookup; or, from an
    operator that discovers unknown hosts, no host and a discovery token (good only for
    sending the inventory, `send_inventory`)."""

    namespace: str
    name: str
    uid: str
    token: str | None
    poll_seconds: float
    discovery_token: str | None = None


class AgentClient:
    def __init__(
        self,
        api_url: str,
        *,
        ca_file: str | Path | None = None,
        ca_data: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(api_url)
        if parts.scheme != "https" or not parts.hostname:
            raise AgentError(f"the agent API URL must be https://HOST[:PORT], not {api_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.base = parts.path.rstrip("/")
        self.timeout = timeout
        try:
            self.context = ssl.create_default_context(
                cafile=str(ca_file) if ca_file is not None else None, cadata=ca_data
            )
        except (OSError, ssl.SSLError) as exc:
            raise AgentError(f"cannot load the operator's CA: {exc}") from exc
        self._connection: http.client.HTTPSConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the API -------------------------------------------------------------------------

    def lookup(
        self,
        mac_addresses: Sequence[str],
        *,
        system_uuid: str | None = None,
        serial_number: str | None = None,
        has_token: bool | None = None,
    ) -> Lookup:
        # A fresh connection: a lookup can hand out the token, so it must not be sent on a
        # connection the server may already have closed (a retry would get no token).
        self.close()
        body = {
            "mac_addresses": list(mac_addresses),
            "system_uuid": system_uuid,
            "serial_number": serial_number,
            "has_token": has_token,
        }
        answer = self.request("POST", "/v1/lookup", body)
        host = answer.get("host") or {}
        token = answer.get("token")
        discovery = answer.get("discovery") or {}
        discovery_token = discovery.get("token") if isinstance(discovery, dict) else None
        return Lookup(
            namespace=str(host.get("namespace", "")),
            name=str(host.get("name", "")),
            uid=str(host.get("uid", "")),
            token=token if isinstance(token, str) else None,
            poll_seconds=float(answer.get("poll_seconds") or 30.0),
            discovery_token=discovery_token if isinstance(discovery_token, str) else None,
        )

    def send_inventory(self, discovery_token: str, inventory: JsonObject) -> JsonObject:
        """Send this machine's inventory with a discovery token: the operator makes (or has
        made) a BareMetalHost of it; the answer names it (``host``, ``created``)."""
        return self.request(
            "POST", "/v1/discovery/inventory", {"inventory": inventory}, token=discovery_token
        )

    def command(self, uid: str, token: str, wait: float = 0.0) -> JsonObject:
        """The command to run now; waits up to ``wait`` seconds while there is none."""
        return self.request(
            "GET",
            f"/v1/hosts/{quote(uid, safe='')}/command?wait={wait:g}",
            token=token,
            timeout=self.timeout + wait,
        )

    def post_result(
        self,
        uid: str,
        token: str,
        command_id: str,
        status: str,
        result: JsonObject | None = None,
        error: str | None = None,
    ) -> bool:
        """Report a command's outcome; True if recorded now, False if it already was."""
        answer = self.request(
            "POST",
            f"/v1/hosts/{quote(uid, safe='')}/results/{quote(command_id, safe='')}",
            {"status": status, "result": result, "error": error},
            token=token,
        )
        return bool(answer.get("recorded"))

    def progress(
        self,
        uid: str,
        token: str,
        command_id: str,
        phase: str,
        *,
        done_bytes: int | None = None,
        detail: str | None = None,
    ) -> None:
        self.request(
            "POST",
            f"/v1/hosts/{quote(uid, safe='')}/progress",
            {"command_id": command_id, "phase": phase, "bytes": done_bytes, "detail": detail},
            token=token,
        )

    # --- transport -----------------------------------------------------------------------

    def _connect(self, timeout: float) -> http.client.HTTPSConnection:
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.context
            )
        self._connection.timeout = timeout
        if self._connection.sock is not None:
            self._connection.sock.settimeout(timeout)
        return self._connection

    def request(
        self,
        method: str,
        path: str,
        body: JsonObject | None = None,
        *,
        token: str | None = None,
        timeout: float | None = None,
    ) -> JsonObject:
        """One call; the answer's JSON object ({} for an empty body), or `AgentApiError`."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection = self._connect(timeout or self.timeout)
            connection.request(method, self.base + path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            retry_after = response.getheader("Retry-After")
            status = response.status
            if response.will_close:
                self.close()
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise AgentApiError(None, f"the operator's certificate is not trusted: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise AgentApiError(None, f"cannot reach the operator: {exc!r}") from exc
        try:
            answer = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            answer = {"error": raw[:200].decode(errors="replace")}
        if not isinstance(answer, dict):
            answer = {"error": str(answer)[:200]}
        if status >= 300:
            raise AgentApiError(
                status,
                str(answer.get("error") or http.client.responses.get(status, "")),
                _seconds(retry_after),
            )
        return answer


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def retrying(
    call: Callable[[], T],
    what: str,
    *,
    attempts: int | None = None,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, retried with exponential backoff (or the operator's Retry-After) while it
    fails with a retryable `AgentApiError`; ``attempts`` None: until it stops failing so."""
    delay = first_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except AgentApiError as exc:
            if not exc.retryable or (attempts is not None and attempt >= attempts):
                raise
            pause = exc.retry_after if exc.retry_after is not None else delay
            log.warning("%s: %s; trying again in %.1f s", what, exc.message, pause)
            sleep(pause)
            delay = min(delay * 2, max_delay)
