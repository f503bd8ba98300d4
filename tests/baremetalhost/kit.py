"""Helpers for the operator tests: an in-process operator that can be stopped and restarted,
host and Secret manifests, and polling the API until a condition holds."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from metal3.controllers.baremetalhost import Settings
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, EVENTS, NAMESPACES, SECRETS
from metal3.operator import Operator, OperatorOptions
from metal3.provisioner.base import ProvisionerFactory
from metal3.provisioner.fixture import FixtureProvisionerFactory, FixtureWorld

REPO = Path(__file__).resolve().parents[2]

FAST = Settings(
    provisioning_limit=50,
    max_provisioning_retries=3,
    power_poll_interval=0.5,
    error_backoff_unit=0.02,
    delayed_retry=0.1,
    in_progress_poll=0.0,
)


def secret(
    name: str, namespace: str, username: str = "admin", password: str = "pw"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "username": base64.b64encode(username.encode()).decode(),
            "password": base64.b64encode(password.encode()).decode(),
        },
    }


def host(
    name: str,
    namespace: str,
    *,
    bmc: bool = True,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"online": True, **spec}
    if bmc:
        body["bmc"] = {
            "address": f"redfish://10.0.0.1/redfish/v1/Systems/{name}",
            "credentialsName": f"{name}-bmc",
        }
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": metadata,
        "spec": body,
    }


IMAGE = {"url": "http://192.0.2.1/images/os.qcow2", "checksum": "a" * 64, "checksumType": "sha256"}


def state(obj: dict[str, Any] | None) -> str:
    if obj is None:
        return "<gone>"
    return str(((obj.get("status") or {}).get("provisioning") or {}).get("state", ""))


def condition(obj: dict[str, Any], type_: str) -> str | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return str(item.get("status"))
    return None


@dataclass
class Cluster:
    """A client of the test API server, plus the operator's simulated hardware."""

    client: KubeClient
    namespace: str
    world: FixtureWorld = field(default_factory=FixtureWorld)

    async def apply_host(self, manifest: dict[str, Any], *, with_secret: bool = True) -> None:
        name = manifest["metadata"]["name"]
        if with_secret and "bmc" in manifest["spec"]:
            await self.client.create(SECRETS, secret(f"{name}-bmc", self.namespace))
        await self.client.create(BAREMETALHOSTS, manifest)

    async def get(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.client.get(BAREMETALHOSTS, self.namespace, name)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def patch(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.client.patch(BAREMETALHOSTS, self.namespace, name, patch)

    async def delete(self, name: str) -> None:
        await self.client.delete(BAREMETALHOSTS, self.namespace, name)

    async def wait_for(
        self,
        name: str,
        predicate: Callable[[dict[str, Any] | None], bool],
        *,
        timeout: float = 20.0,
        what: str = "",
    ) -> dict[str, Any] | None:
        last: dict[str, Any] | None = None
        with anyio.move_on_after(timeout):
            while True:
                last = await self.get(name)
                if predicate(last):
                    return last
                await anyio.sleep(0.05)
        raise AssertionError(
            f"{name}: timed out waiting for {what or predicate}; state {state(last)!r}, "
            f"status {(last or {}).get('status')}"
        )

    async def wait_state(self, name: str, wanted: str, timeout: float = 20.0) -> dict[str, Any]:
        obj = await self.wait_for(
            name, lambda o: state(o) == wanted, timeout=timeout, what=f"state {wanted!r}"
        )
        assert obj is not None
        return obj

    async def wait_gone(self, name: str, timeout: float = 20.0) -> None:
        await self.wait_for(name, lambda o: o is None, timeout=timeout, what="deletion")

    async def wait_events(
        self, reasons: set[str], *, name: str | None = None, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The namespace's events (about ``name``, if given) once their reasons include all of
        ``reasons``: the operator sends events in the background, after the status write."""
        events: list[dict[str, Any]] = []
        seen: set[str] = set()
        with anyio.move_on_after(timeout):
            while True:
                items, _ = await self.client.list(EVENTS, self.namespace)
                events = [e for e in items if name is None or e["involvedObject"]["name"] == name]
                seen = {e["reason"] for e in events}
                if reasons <= seen:
                    return events
                await anyio.sleep(0.05)
        raise AssertionError(f"timed out waiting for events {sorted(reasons - seen)}; saw {seen}")

    async def record_states(self, name: str, seen: list[str], *, task_status: Any) -> None:
        """Append every provisioning state the host passes through (from a watch) to ``seen``,
        until it is deleted; started with ``await tg.start(...)``."""
        _, version = await self.client.list(BAREMETALHOSTS, self.namespace)
        task_status.started()
        while True:
            async for event in self.client.watch(
                BAREMETALHOSTS, self.namespace, resource_version=version, timeout_seconds=60
            ):
                if event.object.get("metadata", {}).get("name") != name:
                    continue
                version = event.object["metadata"].get("resourceVersion", version)
                if event.type == "DELETED":
                    seen.append("<gone>")
                    return
                current = state(event.object)
                if not seen or seen[-1] != current:
                    seen.append(current)

    def uid(self, obj: dict[str, Any]) -> str:
        return str(obj["metadata"]["uid"])


@asynccontextmanager
async def running_operator(
    kubeconfig: Path,
    world: FixtureWorld,
    *,
    namespace: str | None = None,
    settings: Settings = FAST,
    concurrency: int = 4,
    provisioners: ProvisionerFactory | None = None,
    **options: Any,
) -> AsyncIterator[Operator]:
    """An operator on the test API server until the block ends (then a clean shutdown); its
    provisioners are the fixture's on ``world`` unless a factory is given."""
    operator = Operator(
        OperatorOptions(
            kubeconfig=str(kubeconfig),
            namespace=namespace,
            concurrency=concurrency,
            settings=settings,
            grace_period=5.0,
            **{"provisioner": "fixture", **options},
        ),
        provisioners or FixtureProvisionerFactory(world),
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(operator.run, stop)
        await operator.started.wait()
        try:
            yield operator
        finally:
            stop.set()


@asynccontextmanager
async def cluster(kubeconfig: Path, namespace: str) -> AsyncIterator[Cluster]:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await client.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
        yield Cluster(client, namespace)
