"""Helpers for the discovery tests: the agent API with discovery on, served in-process over TLS
against the test API server, and inventories of simulated systems."""

from __future__ import annotations

import copy
import json
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
from metal3.discovery.service import DiscoveryOptions
from metal3.kube.client import KubeClient
from metal3.kube.resources import NAMESPACES

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def base_inventory() -> dict[str, Any]:
    """A small inventory: 2 CPUs x86_64, 4 GiB, one disk, NICs filled in by `inventory`."""
    return {
        "interfaces": [],
        "cpu": {"model_name": "Lab CPU", "frequency": "2400", "count": 2, "architecture": "x86_64",
                "flags": ["lm"]},
        "disks": [{"name": "/dev/vda", "model": "disk", "size": 8 * 2**30, "rotational": False,
                   "vendor": "virtio", "serial": None, "wwn": None, "wwn_with_extension": None,
                   "wwn_vendor_extension": None, "hctl": None, "by_path": None}],
        "memory": {"total": 4 * 2**30, "physical_mb": 4096},
        "bmc_address": "0.0.0.0",
        "bmc_v6address": "::/0",
        "system_vendor": {"product_name": "Lab Box 9", "serial_number": "", "manufacturer":
                          "Metal3 Lab Inc."},
        "boot": {"current_boot_mode": "uefi", "pxe_interface": None},
        "hostname": "localhost",
    }  # fmt: skip


def inventory(
    macs: list[str], *, serial: str | None = None, pxe: str | None = None, **extra: Any
) -> dict[str, Any]:
    doc = copy.deepcopy(base_inventory())
    doc["interfaces"] = [
        {"name": f"eth{i}", "mac_address": mac, "ipv4_address": f"192.0.2.{10 + i}",
         "ipv6_address": None, "has_carrier": True, "lldp": None, "vendor": None,
         "product": None, "client_id": None, "biosdevname": None, "speed_mbps": 1000}
        for i, mac in enumerate(macs)
    ]  # fmt: skip
    doc["system_vendor"]["serial_number"] = serial or ""
    doc["boot"]["pxe_interface"] = pxe
    doc.update(extra)
    return doc


@dataclass
class Served:
    client: KubeClient
    namespace: str
    api: AgentApi
    url: str
    ca_file: Path
    clients: list[AgentClient] = field(default_factory=list)

    def agent(self) -> AgentClient:
        client = AgentClient(self.url, ca_file=self.ca_file)
        self.clients.append(client)
        return client

    async def call(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(func)

    async def refused(self, func: Callable[[], object]) -> AgentApiError:
        def attempt() -> AgentApiError:
            try:
                func()
            except AgentApiError as exc:
                return exc
            raise AssertionError("the call was not refused")

        return await anyio.to_thread.run_sync(attempt)


@asynccontextmanager
async def serving(
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    *,
    per_minute: int = 10,
    rate_limit: RateLimit | None = None,
    create_namespace: bool = True,
) -> AsyncIterator[Served]:
    """The agent API with discovery into ``namespace`` (watching every namespace)."""
    tls = ensure_tls(tmp_path / "tls", "127.0.0.1")
    async with await KubeClient.connect(str(kubeconfig)) as client:
        if create_namespace:
            await client.create(
                NAMESPACES,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            )
        api = AgentApi(
            client,
            rate_limit=rate_limit or RateLimit(rate=0),
            discovery=DiscoveryOptions(namespace=namespace, hosts_per_minute=per_minute),
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
            harness = Served(client, namespace, api, server.url, tls.ca_cert)
            try:
                yield harness
            finally:
                for agent in harness.clients:
                    agent.close()
                server.stop()
                with anyio.move_on_after(5):
                    await served.wait()
                tg.cancel_scope.cancel()


def status_annotation(obj: dict[str, Any]) -> dict[str, Any]:
    raw = obj["metadata"]["annotations"]["baremetalhost.metal3.io/status"]
    return dict(json.loads(raw))
