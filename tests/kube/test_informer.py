"""Informers against a real `metal3 apiserver`: list, watch, resume, and relist after 410."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from apiserver.apiserver_kit import REPO, ServerProcess
from metal3.kube.client import KubeClient
from metal3.kube.informer import Informer
from metal3.kube.resources import NAMESPACES, SECRETS

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def short_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("informer") / "data", REPO / "crds", ["--watch-history", "5"]
    )
    server.start()
    yield server
    server.stop()


def secret(name: str, value: str = "x", namespace: str = "inf") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"v": value},
    }


async def test_relists_after_410_and_reports_what_changed(short_history: ServerProcess) -> None:
    async with await KubeClient.connect(str(short_history.kubeconfig)) as client:
        await client.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "inf"}}
        )
        for i in range(3):
            await client.create(SECRETS, secret(f"s{i}"))
        informer = Informer(client, SECRETS, "inf")
        events: list[tuple[str, str]] = []
        informer.add_handler(lambda kind, obj: events.append((kind, obj["metadata"]["name"])))

        async with anyio.create_task_group() as tg:
            tg.start_soon(informer.run)
            await informer.synced.wait()
            await client.create(SECRETS, secret("s3"))
            with anyio.fail_after(10):
                while ("ADDED", "s3") not in events:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()  # the informer is offline from here
        assert sorted(n for _, n in events) == ["s0", "s1", "s2", "s3"]
        stale_version = informer.resource_version

        # More changes than the server's watch history holds, while nobody watches.
        await client.delete(SECRETS, "inf", "s0")
        for i in range(10):
            await client.patch(SECRETS, "inf", "s1", {"stringData": {"v": str(i)}})
        await client.create(SECRETS, secret("s4"))
        events.clear()

        async with anyio.create_task_group() as tg:
            tg.start_soon(informer.run)  # resumes from stale_version: 410, then lists again
            with anyio.fail_after(10):
                while informer.relists == 0 or ("ADDED", "s4") not in events:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert informer.resource_version != stale_version
        assert ("DELETED", "s0") in events
        assert sorted(k for k, _ in informer.store.object_keys()) == ["inf"] * 4
        assert sorted(n for _, n in informer.store.object_keys()) == ["s1", "s2", "s3", "s4"]
        assert ("ADDED", "s2") not in events, "unchanged objects are not reported again"


async def test_watch_resumes_across_an_apiserver_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", REPO / "crds", [])
    server.start()
    try:
        async with await KubeClient.connect(str(server.kubeconfig)) as client:
            await client.create(
                NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "inf"}}
            )
            informer = Informer(client, SECRETS, "inf")
            seen: list[str] = []
            informer.add_handler(lambda kind, obj: seen.append(obj["metadata"]["name"]))
            async with anyio.create_task_group() as tg:
                tg.start_soon(informer.run)
                await informer.synced.wait()
                await anyio.to_thread.run_sync(server.restart)
                await client.create(SECRETS, secret("after-restart"))
                with anyio.fail_after(20):
                    while "after-restart" not in seen:
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            assert informer.store.get("inf", "after-restart") is not None
    finally:
        server.stop()


async def test_a_write_answered_after_its_objects_deletion_does_not_bring_it_back(
    short_history: ServerProcess,
) -> None:
    """A reconciler caches what its write returned; when that write removes the last
    finalizer, the watch's DELETED can be applied before the answer is cached. The cache
    must then keep the object gone (a ghost host kept its claim bound forever)."""
    async with await KubeClient.connect(str(short_history.kubeconfig)) as client:
        await client.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tomb"}}
        )
        held = secret("held", namespace="tomb")
        held["metadata"]["finalizers"] = ["test/hold"]
        await client.create(SECRETS, held)
        informer = Informer(client, SECRETS, "tomb")
        deleted: list[str] = []
        informer.add_handler(
            lambda kind, obj: deleted.append(obj["metadata"]["name"]) if kind == "DELETED" else None
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(informer.run)
            await informer.synced.wait()
            await client.delete(SECRETS, "tomb", "held")
            last = await client.patch(SECRETS, "tomb", "held", {"metadata": {"finalizers": None}})
            with anyio.fail_after(10):
                while "held" not in deleted:
                    await anyio.sleep(0.01)
            assert last["metadata"].get("deletionTimestamp")  # the write's answer, now stale
            assert informer.store.put(last) is False
            assert informer.store.get("tomb", "held") is None

            # The same name made again is a newer object, and is cached.
            await client.create(SECRETS, secret("held", namespace="tomb"))
            with anyio.fail_after(10):
                while informer.store.get("tomb", "held") is None:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
