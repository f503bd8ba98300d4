"""An agent API served in-process over TLS, with a client of the test API server to set hosts
up, and the agent's own HTTP client to call it (run in a thread: it blocks)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from metal3.agent.client import AgentApiError, AgentClient
from metal3.agentapi.app import AgentApi
from metal3.agentapi.ratelimit import RateLimit
from metal3.agentapi.server import AgentApiOptions, AgentServer, ensure_tls
from metal3.kube.client import MERGE_PATCH, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, NAMESPACES, SECRETS

T = TypeVar("T")


def host_manifest(name: str, namespace: str, mac: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"online": True, "bootMACAddress": mac, **spec},
    }


def status(state: str, **extra: Any) -> dict[str, Any]:
    return {
        "operationalStatus": "OK",
        "errorMessage": "",
        "poweredOn": True,
        "errorCount": 0,
        "provisioningFailCount": 0,
        "provisioning": {"state": state, "ID": ""},
        "operationHistory": {
            "inspect": {"start": "2026-01-01T10:00:05Z", "end": "2026-01-01T10:03:00Z"},
            "provision": {"start": "2026-01-01T10:05:00Z", "end": None},
        },
        **extra,
    }


def secret(name: str, namespace: str, **values: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v).decode() for k, v in values.items()},
    }


@dataclass
class Harness:
    client: KubeClient
    namespace: str
    api: AgentApi
    url: str
    ca_file: Path
    results: list[tuple[str, str]] = field(default_factory=list)  # on_result calls
    clients: list[AgentClient] = field(default_factory=list)

    def agent(self, ca_file: Path | None = None) -> AgentClient:
        """An agent's client (closed at the end: an open TLS connection delays shutdown)."""
        client = AgentClient(self.url, ca_file=ca_file or self.ca_file)
        self.clients.append(client)
        return client

    async def call(self, func: Callable[[], T]) -> T:
        """A blocking agent call, in a thread (the API runs on this event loop)."""
        return await anyio.to_thread.run_sync(func)

    async def refused(self, func: Callable[[], object]) -> AgentApiError:
        def attempt() -> AgentApiError:
            try:
                func()
            except AgentApiError as exc:
                return exc
            raise AssertionError("the call was not refused")

        return await anyio.to_thread.run_sync(attempt)

    async def create_host(
        self, name: str, mac: str, *, state: str | None = "inspecting", **spec: Any
    ) -> dict[str, Any]:
        """A host, in ``state`` (where an agent runs, by default: lookups are refused in the
        others) and seen so by the API; None leaves it with no status, as a new host."""
        created = await self.client.create(
            BAREMETALHOSTS, host_manifest(name, self.namespace, mac, **spec)
        )
        if state is None:
            return created
        patched = await self.set_status(name, state)
        await self.wait_seen(name, patched["metadata"]["resourceVersion"])
        return patched

    async def set_status(self, name: str, state: str, **extra: Any) -> dict[str, Any]:
        return await self.client.patch(
            BAREMETALHOSTS,
            self.namespace,
            name,
            {"status": status(state, **extra)},
            subresource="status",
            content_type=MERGE_PATCH,
        )

    async def wait_seen(self, name: str, version: str) -> None:
        """Until the API's own view of the host has caught up with ``version``."""
        with anyio.fail_after(10):
            while True:
                obj = self.api.hosts.informer.store.get(self.namespace, name)
                if obj is not None and int(obj["metadata"]["resourceVersion"]) >= int(version):
                    return
                await anyio.sleep(0.02)

    async def create_secret(self, name: str, namespace: str | None = None, **values: bytes) -> None:
        await self.client.create(SECRETS, secret(name, namespace or self.namespace, **values))


@asynccontextmanager
async def serving(
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    *,
    rate_limit: RateLimit | None = None,
    poll_seconds: float = 30.0,
) -> AsyncIterator[Harness]:
    tls = ensure_tls(tmp_path / "tls", "127.0.0.1")
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await client.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
        calls: list[tuple[str, str]] = []
        api = AgentApi(
            client,
            namespace=namespace,
            rate_limit=rate_limit or RateLimit(rate=1000, burst=1000),
            on_result=lambda ns, name: calls.append((ns, name)),
            poll_seconds=poll_seconds,
        )
        server = AgentServer(
            AgentApiOptions(listen="127.0.0.1:0", cert_file=tls.cert, key_file=tls.key), api
        )
        served = anyio.Event()

        async def serve() -> None:
            try:
                await server.serve()
            finally:
                served.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(api.run)
            tg.start_soon(serve)
            with anyio.fail_after(15):
                while not (api.hosts.synced and server.server.started):
                    await anyio.sleep(0.02)
            harness = Harness(client, namespace, api, server.url, tls.ca_cert, calls)
            try:
                yield harness
            finally:
                for agent in harness.clients:
                    agent.close()
                server.stop()
                with anyio.move_on_after(5):
                    await served.wait()
                tg.cancel_scope.cancel()
