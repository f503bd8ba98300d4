"""Helpers for the claim tests: hosts written straight into the API server in a given state
(no operator needed to test the engine), HostClaim manifests, and polling."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, NAMESPACES, SECRETS

IMAGE = {"url": "http://192.0.2.1/images/os.qcow2", "checksum": "a" * 64, "checksumType": "sha256"}


async def make_namespace(
    client: KubeClient, name: str, labels: dict[str, str] | None = None
) -> None:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    await client.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})


def status(state: str = "available", **extra: Any) -> dict[str, Any]:
    return {
        "operationalStatus": "OK",
        "provisioning": {"state": state, "ID": "x"},
        "errorMessage": "",
        "poweredOn": False,
        "errorCount": 0,
        "provisioningFailCount": 0,
        **extra,
    }


async def put_host(
    client: KubeClient,
    namespace: str,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    state: str = "available",
    spec: dict[str, Any] | None = None,
    **status_extra: Any,
) -> dict[str, Any]:
    """A BareMetalHost with the given status (as if the operator had brought it there)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if annotations:
        metadata["annotations"] = annotations
    created = await client.create(
        BAREMETALHOSTS,
        {
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": metadata,
            "spec": {"online": False, **(spec or {})},
        },
    )
    created["status"] = status(state, **status_extra)
    return await client.replace(BAREMETALHOSTS, created, subresource="status")


async def set_host_status(
    client: KubeClient, namespace: str, name: str, state: str, **extra: Any
) -> dict[str, Any]:
    for _ in range(20):
        host = await client.get(BAREMETALHOSTS, namespace, name)
        host["status"] = status(state, **extra)
        try:
            return await client.replace(BAREMETALHOSTS, host, subresource="status")
        except ApiError as exc:
            if not exc.conflict:
                raise
    raise AssertionError(f"could not write the status of {namespace}/{name}")


def opaque_secret(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


async def create_secret(client: KubeClient, name: str, namespace: str, **data: str) -> None:
    await client.create(SECRETS, opaque_secret(name, namespace, **data))


def hostclaim(
    name: str,
    namespace: str,
    selector: dict[str, Any] | None = None,
    *,
    powered_on: bool = True,
    image: dict[str, Any] | None = None,
    user_data: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"poweredOn": powered_on, **spec}
    if selector is not None:
        body["hostSelector"] = selector
    if image is not None:
        body["image"] = image
    if user_data is not None:
        body["userData"] = {"name": user_data}
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "HostClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


def condition_is(obj: dict[str, Any] | None, type_: str, status_: str, reason: str) -> bool:
    found = condition(obj, type_)
    return found is not None and (found["status"], found["reason"]) == (status_, reason)


async def eventually(
    probe: Callable[[], Awaitable[Any]],
    predicate: Callable[[Any], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> Any:
    """Poll ``probe`` until ``predicate`` holds on its result; fail saying ``what`` and the
    last result after ``timeout`` seconds."""
    last: Any = None
    with anyio.move_on_after(timeout):
        while True:
            last = await probe()
            if predicate(last):
                return last
            await anyio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")


async def get_or_none(client: KubeClient, resource: Any, namespace: str, name: str) -> Any:
    try:
        return await client.get(resource, namespace, name)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise
