"""Asynchronous access to the Kubernetes REST API.

Built on the official asyncio client (`kubernetes_asyncio`): its kubeconfig and in-cluster
loading, TLS context, token handling and connection pool. We issue the REST calls ourselves with
orjson bodies, because the operator works on plain JSON objects (parsed into our own API types)
rather than the client's generated model classes, and because the client's body encoder is the
stdlib's. Every call has a timeout; watches are async iterators, cancelled like any task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from yarl import URL

from metal3.kube.resources import Resource

JsonObject = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    """A non-2xx answer, with the fields of the Kubernetes `Status` it carried."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
    object: JsonObject


class KubeClient:
    """JSON in, JSON out; one instance per process, shared by all tasks."""

    def __init__(self, api_client: ApiClient, *, timeout: float = 30.0) -> None:
        self._api = api_client
        self._config: Configuration = api_client.configuration
        self._host = (self._config.host or "").rstrip("/")
        self.timeout = timeout
        # The official client's session looks up netrc and proxy variables in a thread on every
        # request (trust_env); ours shares its connector (TLS context, pool) and resolves the
        # proxy once.
        official: aiohttp.ClientSession = api_client.rest_client.pool_manager
        self._session = aiohttp.ClientSession(
            connector=official.connector, connector_owner=False, trust_env=False
        )
        self._proxy: str | None = self._config.proxy
        if self._proxy is None and self._host:
            with suppress(LookupError):
                proxy_url, _ = get_env_proxy_for_url(URL(self._host))
                self._proxy = str(proxy_url)

    @classmethod
    async def connect(
        cls, kubeconfig: str | None = None, *, context: str | None = None, pool_size: int = 64
    ) -> KubeClient:
        """From a kubeconfig file, else the in-cluster service account, else ~/.kube/config."""
        configuration = Configuration()
        configuration.connection_pool_maxsize = pool_size
        if kubeconfig is None:
            try:
                kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except kube_config.ConfigException:
                await kube_config.load_kube_config(
                    context=context, client_configuration=configuration
                )
        else:
            await kube_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        return cls(ApiClient(configuration))

    async def close(self) -> None:
        await self._session.close()
        await self._api.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- transport -----------------------------------------------------------------------

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        await self._api.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    def _url(self, path: str, query: Mapping[str, Any] | None) -> str:
        url = self._host + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return url

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | None = None,
    ) -> JsonObject:
        data = orjson.dumps(body) if body is not None else None
        headers = await self._headers(content_type if data is not None else None)
        async with self._session.request(
            method,
            self._url(path, query),
            data=data,
            headers=headers,
            proxy=self._proxy,
            timeout=aiohttp.ClientTimeout(total=request_timeout or self.timeout),
        ) as response:
            raw = await response.read()
            if response.status >= 300:
                raise _api_error(response.status, raw)
            result: JsonObject = orjson.loads(raw) if raw else {}
            return result

    # --- verbs ---------------------------------------------------------------------------

    async def get(self, resource: Resource, namespace: str | None, name: str) -> JsonObject:
        return await self.request("GET", resource.path(namespace, name))

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[JsonObject], str]:
        """All items (following `continue`), and the list's resourceVersion to watch from."""
        items: list[JsonObject] = []
        token: str | None = None
        while True:
            result = await self.request(
                "GET",
                resource.path(namespace),
                query={
                    "labelSelector": label_selector,
                    "fieldSelector": field_selector,
                    "limit": 500,
                    "continue": token,
                },
            )
            items.extend(result.get("items") or [])
            metadata = result.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                return items, str(metadata.get("resourceVersion", ""))

    async def create(self, resource: Resource, obj: JsonObject) -> JsonObject:
        namespace = (obj.get("metadata") or {}).get("namespace")
        return await self.request("POST", resource.path(namespace), body=obj)

    async def replace(
        self, resource: Resource, obj: JsonObject, *, subresource: str | None = None
    ) -> JsonObject:
        """PUT: fails with 409 when ``metadata.resourceVersion`` is stale."""
        metadata = obj["metadata"]
        path = resource.path(metadata.get("namespace"), metadata["name"], subresource)
        return await self.request("PUT", path, body=obj)

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> JsonObject:
        path = resource.path(namespace, name, subresource)
        return await self.request("PATCH", path, body=patch, content_type=content_type)

    async def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
    ) -> JsonObject:
        body = {"propagationPolicy": propagation} if propagation else None
        return await self.request("DELETE", resource.path(namespace, name), body=body)

    async def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``resource_version`` until the server ends the watch.

        A 410 Gone (as a status code or an ERROR event) raises :class:`ApiError` with status 410:
        the caller must list again.
        """
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": timeout_seconds,
            "allowWatchBookmarks": "true" if bookmarks else None,
        }
        headers = await self._headers(None)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=timeout_seconds + 30
        )
        async with self._session.get(
            self._url(resource.path(namespace), query),
            headers=headers,
            proxy=self._proxy,
            timeout=timeout,
        ) as response:
            if response.status >= 300:
                raise _api_error(response.status, await response.read())
            # Events are newline-delimited JSON; split ourselves, as one event (a host with
            # its hardware details) can exceed aiohttp's line length limit.
            pending = b""
            async for chunk in response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _watch_event(line)
            if pending.strip():
                yield _watch_event(pending)


def _watch_event(line: bytes) -> WatchEvent:
    event = orjson.loads(line)
    kind, obj = event.get("type", ""), event.get("object") or {}
    if kind == "ERROR":
        raise ApiError(int(obj.get("code", 500)), obj.get("reason", ""), obj.get("message", ""))
    return WatchEvent(kind, obj)


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ApiError(status, "", raw.decode(errors="replace")[:500])
    if not isinstance(body, dict):
        return ApiError(status, "", str(body)[:500])
    return ApiError(status, str(body.get("reason", "")), str(body.get("message", "")))
