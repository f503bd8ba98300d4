"""The claim engine against the embedded API server: which host it chooses, that a host is never
claimed twice (two engines with their own caches race like two operator processes), that a
stale cache only costs a retried conflict, and how a release gives a host back.

Hosts are written straight into the server in the state the test needs; no operator runs, so
each test controls exactly what the engine sees.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from claims.claimkit import IMAGE, eventually, make_namespace, put_host, set_host_status
from metal3.claims.engine import NO_BAREMETALHOST, ClaimEngine, Consumer, HostRequest
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.informer import Informer
from metal3.kube.resources import BAREMETALHOSTS

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def engine_on(kubeconfig: Path, namespace: str) -> AsyncIterator[ClaimEngine]:
    """An engine with its own client and host cache (as one operator process has)."""
    async with await KubeClient.connect(str(kubeconfig)) as client:
        hosts = Informer(client, BAREMETALHOSTS, namespace)
        async with anyio.create_task_group() as tg:
            tg.start_soon(hosts.run)
            await hosts.synced.wait()
            yield ClaimEngine(client, hosts)
            tg.cancel_scope.cancel()


async def cached(engine: ClaimEngine, namespace: str, name: str) -> dict[str, Any] | None:
    await anyio.lowlevel.checkpoint()
    return engine.host(namespace, name)


def consumer(namespace: str, name: str, uid: str | None = None) -> Consumer:
    return Consumer("metal3.io/v1alpha1", "HostClaim", namespace, name, uid or str(uuid.uuid4()))


def request(c: Consumer, selector: dict[str, Any] | None = None, **kw: Any) -> HostRequest:
    return HostRequest(c, selector or {}, [c.namespace], **kw)


async def consumers_of_hosts(client: KubeClient, namespace: str) -> dict[str, dict[str, Any]]:
    items, _ = await client.list(BAREMETALHOSTS, namespace)
    return {
        h["metadata"]["name"]: h["spec"]["consumerRef"]
        for h in items
        if h["spec"].get("consumerRef")
    }


async def test_chooses_an_eligible_matching_host_in_name_order(
    kubeconfig: Path, namespace: str
) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        gold = {"tier": "gold"}
        await put_host(client, namespace, "a-silver", labels={"tier": "silver"})
        await put_host(client, namespace, "b-paused", labels=gold,
                       annotations={"baremetalhost.metal3.io/paused": ""})  # fmt: skip
        await put_host(client, namespace, "c-detached", labels=gold,
                       annotations={"baremetalhost.metal3.io/detached": ""})  # fmt: skip
        await put_host(client, namespace, "d-error", labels=gold,
                       errorType="power management error")  # fmt: skip
        await put_host(client, namespace, "e-inspecting", labels=gold, state="inspecting")
        other = {"kind": "Other", "name": "x", "namespace": namespace}
        await put_host(client, namespace, "f-consumed", labels=gold, spec={"consumerRef": other})
        await put_host(client, namespace, "g-gold", labels=gold)
        await put_host(client, namespace, "h-gold", labels=gold)
        async with engine_on(kubeconfig, namespace) as engine:
            first = consumer(namespace, "first")
            binding = await engine.bind(request(first, {"matchLabels": gold}))
            assert binding.host is not None
            assert binding.host["metadata"]["name"] == "g-gold"
            assert binding.host["spec"]["consumerRef"]["uid"] == first.uid
            # Idempotent: asking again returns the same host, from the cache or the overlay.
            again = await engine.bind(request(first, {"matchLabels": gold}))
            assert again.host is not None and again.host["metadata"]["name"] == "g-gold"
            assert engine.bound_host(first) is not None
            second = await engine.bind(
                request(consumer(namespace, "second"), {"matchLabels": gold})
            )
            assert second.host is not None and second.host["metadata"]["name"] == "h-gold"
            third = await engine.bind(request(consumer(namespace, "third"), {"matchLabels": gold}))
            assert third.host is None and third.reason == NO_BAREMETALHOST
            assert engine.binds == 2
        consumed = await consumers_of_hosts(client, namespace)
        assert sorted(consumed) == ["f-consumed", "g-gold", "h-gold"]


async def test_failure_domain_is_preferred(kubeconfig: Path, namespace: str) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        label = "infrastructure.cluster.x-k8s.io/failure-domain"
        await put_host(client, namespace, "a", labels={label: "fd-1"})
        await put_host(client, namespace, "b", labels={label: "fd-2"})
        async with engine_on(kubeconfig, namespace) as engine:
            binding = await engine.bind(request(consumer(namespace, "c"), failure_domain="fd-2"))
            assert binding.host is not None and binding.host["metadata"]["name"] == "b"
            # A preference, not a constraint: with fd-2 taken, fd-1's host is bound.
            other = await engine.bind(request(consumer(namespace, "d"), failure_domain="fd-2"))
            assert other.host is not None and other.host["metadata"]["name"] == "a"


async def test_invalid_selector_binds_nothing_and_says_why(
    kubeconfig: Path, namespace: str
) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await put_host(client, namespace, "a")
        async with engine_on(kubeconfig, namespace) as engine:
            bad = {"matchExpressions": [{"key": "x", "operator": "Like", "values": ["y"]}]}
            binding = await engine.bind(request(consumer(namespace, "c"), bad))
            assert binding.host is None and binding.reason == NO_BAREMETALHOST
            assert "unknown operator 'Like'" in binding.message
        assert await consumers_of_hosts(client, namespace) == {}


async def test_two_engines_racing_never_claim_a_host_twice(
    kubeconfig: Path, namespace: str
) -> None:
    """Two engines (own clients, own caches: two operator processes) bind 24 consumers at once
    on 10 hosts: 10 bound, each host to one consumer, each consumer to at most one host, and
    the losers of a race were refused by the server (409) and chose again."""
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        for i in range(10):
            await put_host(client, namespace, f"host-{i:02d}")
        consumers = [consumer(namespace, f"c-{i:02d}") for i in range(24)]
        results: dict[str, str | None] = {}
        async with engine_on(kubeconfig, namespace) as one, engine_on(kubeconfig, namespace) as two:

            async def claim(engine: ClaimEngine, c: Consumer) -> None:
                binding = await engine.bind(request(c))
                results[c.name] = binding.host["metadata"]["name"] if binding.host else None

            async with anyio.create_task_group() as tg:
                for i, c in enumerate(consumers):
                    tg.start_soon(claim, one if i % 2 else two, c)
            conflicts = one.conflicts + two.conflicts
        bound = {name: host for name, host in results.items() if host}
        assert len(bound) == 10
        assert len(set(bound.values())) == 10
        consumed = await consumers_of_hosts(client, namespace)
        assert len(consumed) == 10
        assert {ref["name"] for ref in consumed.values()} == set(bound)
        assert {host: ref["name"] for host, ref in consumed.items()} == {
            h: c for c, h in bound.items()
        }
        assert conflicts > 0  # both engines first chose host-00: one of them lost
        print(f"\ntwo engines, 24 consumers, 10 hosts: 10 bound, {conflicts} conflicts retried")


async def test_a_stale_cache_costs_a_conflict_not_a_double_claim(
    kubeconfig: Path, namespace: str
) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await put_host(client, namespace, "a")
        await put_host(client, namespace, "b")
        async with engine_on(kubeconfig, namespace) as stale:
            # Freeze the stale engine's view: it never hears of the other's claim.
            stale.hosts.add_handler(lambda kind, obj: None)
            frozen = {k: stale.hosts.store.get(*k) for k in stale.hosts.store.object_keys()}
            async with engine_on(kubeconfig, namespace) as other:
                taken = await other.bind(request(consumer(namespace, "first")))
                assert taken.host is not None and taken.host["metadata"]["name"] == "a"
            for key, obj in frozen.items():
                assert obj is not None
                stale.hosts.store.remove(key)
                stale.hosts.store.put(obj)
            cached_a = stale.hosts.store.get(namespace, "a")
            assert cached_a is not None and not cached_a["spec"].get("consumerRef")
            binding = await stale.bind(request(consumer(namespace, "second")))
            assert binding.host is not None and binding.host["metadata"]["name"] == "b"
            assert stale.conflicts >= 1
        consumed = await consumers_of_hosts(client, namespace)
        assert {h: r["name"] for h, r in consumed.items()} == {"a": "first", "b": "second"}


async def test_consumer_found_by_uid_not_by_name_alone(kubeconfig: Path, namespace: str) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await put_host(client, namespace, "a")
        async with engine_on(kubeconfig, namespace) as engine:
            old = consumer(namespace, "claim")
            assert (await engine.bind(request(old))).host is not None
            recreated = consumer(namespace, "claim")  # same name, new object
            assert engine.bound_host(recreated) is None
            assert engine.bound_host(old) is not None


async def test_release_waits_for_deprovisioning_then_frees_the_host(
    kubeconfig: Path, namespace: str
) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await put_host(client, namespace, "a")
        async with engine_on(kubeconfig, namespace) as engine:
            c = consumer(namespace, "claim")
            data = {"name": "ud", "namespace": namespace}
            bound = await engine.bind(
                request(c, host_fields={"image": IMAGE, "online": True, "userData": data})
            )
            assert bound.host is not None
            assert bound.host["spec"]["image"] == IMAGE and bound.host["spec"]["online"]
            # As the operator would: provisioned with the image.
            await set_host_status(
                client, namespace, "a", "provisioned", provisioning={
                    "state": "provisioned", "ID": "x", "image": IMAGE}
            )  # fmt: skip
            await eventually(
                lambda: cached(engine, namespace, "a"),
                lambda h: h and h["status"]["provisioning"]["state"] == "provisioned",
                timeout=10, what="the cache to see the host provisioned",
            )  # fmt: skip
            assert await engine.release(c) is False
            host = await client.get(BAREMETALHOSTS, namespace, "a")
            spec = host["spec"]
            assert spec["online"] is False
            assert not {"image", "userData", "networkData", "metaData", "customDeploy"} & set(spec)
            assert spec["consumerRef"]["uid"] == c.uid  # held until deprovisioned
            await set_host_status(client, namespace, "a", "deprovisioning")
            await eventually(
                lambda: cached(engine, namespace, "a"),
                lambda h: h["status"]["provisioning"]["state"] == "deprovisioning",
                timeout=10, what="the cache to see deprovisioning",
            )  # fmt: skip
            assert await engine.release(c) is False
            await set_host_status(client, namespace, "a", "available")
            assert await eventually(lambda: engine.release(c), bool, timeout=10, what="the release")
            assert engine.bound_host(c) is None
            assert await engine.release(c) is True  # and again: nothing left to do
        host = await client.get(BAREMETALHOSTS, namespace, "a")
        assert "consumerRef" not in host["spec"]


async def test_update_host_retries_a_conflict_and_removes_fields(
    kubeconfig: Path, namespace: str
) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await put_host(client, namespace, "a")
        async with engine_on(kubeconfig, namespace) as engine:
            c = consumer(namespace, "claim")
            bound = await engine.bind(request(c, host_fields={"image": IMAGE}))
            assert bound.host is not None
            before = bound.host
            # Someone else writes the host (here its status); this engine's cache is made to
            # miss it, as a cache lagging behind the watch would.
            await set_host_status(client, namespace, "a", "available", poweredOn=True)
            await eventually(
                lambda: cached(engine, namespace, "a"),
                lambda h: h["status"]["poweredOn"] is True,
                timeout=10, what="the cache to see the status write",
            )  # fmt: skip
            engine.hosts.store.remove((namespace, "a"))
            engine.hosts.store.put(before)
            written = await engine.update_host(c, {"image": None, "online": True})
            assert written is not None
            assert engine.conflicts == 1
            # Nothing to change: no write at all.
            version = (await client.get(BAREMETALHOSTS, namespace, "a"))["metadata"]
            assert await engine.update_host(c, {"online": True}) is not None
            again = (await client.get(BAREMETALHOSTS, namespace, "a"))["metadata"]
            assert again["resourceVersion"] == version["resourceVersion"]
        host = await client.get(BAREMETALHOSTS, namespace, "a")
        assert "image" not in host["spec"] and host["spec"]["online"] is True
        assert host["spec"]["consumerRef"]["uid"] == c.uid
        assert host["status"]["poweredOn"] is True  # the other writer's change is kept


def lose_answer_of_first_claim(engine: ClaimEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's next consumerRef write is applied by the server but answered 504 (as a
    kube-apiserver answers a write that timed out on its way to storage, and may still apply)."""
    replace = engine.client.replace
    lost: list[bool] = []

    async def replace_then_lose(resource: Any, obj: Any, **kw: Any) -> Any:
        written = await replace(resource, obj, **kw)
        if not lost and resource is BAREMETALHOSTS and obj["spec"].get("consumerRef"):
            lost.append(True)
            raise ApiError(504, "Timeout", "request did not complete within requested timeout")
        return written

    monkeypatch.setattr(engine.client, "replace", replace_then_lose)


async def lag_cache(engine: ClaimEngine, before: dict[str, Any], what: str) -> None:
    """Let the watch bring the host's newer version, then put ``before`` back: a cache that
    has not seen the write yet."""
    namespace, name = before["metadata"]["namespace"], before["metadata"]["name"]
    await eventually(
        lambda: cached(engine, namespace, name),
        lambda h: h["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"],
        timeout=10, what=what,
    )  # fmt: skip
    engine.hosts.store.remove((namespace, name))
    engine.hosts.store.put(before)


async def test_a_lost_claim_answer_never_gives_the_consumer_a_second_host(
    kubeconfig: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server applied the claim of host b but its answer was an error: asked again (the
    cache still showing b free, and a host a sorting first added meanwhile), the engine finds
    b is its host instead of claiming a too."""
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await put_host(client, namespace, "b")
        async with engine_on(kubeconfig, namespace) as engine:
            c = consumer(namespace, "claim")
            before = engine.host(namespace, "b")
            assert before is not None
            lose_answer_of_first_claim(engine, monkeypatch)
            with pytest.raises(ApiError):
                await engine.bind(request(c))
            await lag_cache(engine, before, "the watch to show b claimed")
            await put_host(client, namespace, "a")
            await eventually(
                lambda: cached(engine, namespace, "a"), lambda h: h is not None,
                timeout=10, what="the cache to see host a",
            )  # fmt: skip
            binding = await engine.bind(request(c))
            assert binding.host is not None and binding.host["metadata"]["name"] == "b"
            # Host a stayed free for another consumer.
            other = await engine.bind(request(consumer(namespace, "other")))
            assert other.host is not None and other.host["metadata"]["name"] == "a"
        consumed = await consumers_of_hosts(client, namespace)
        assert {h: r["name"] for h, r in consumed.items()} == {"b": "claim", "a": "other"}


async def test_a_release_after_a_lost_claim_answer_frees_the_host(
    kubeconfig: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer goes away right after a claim write whose answer was lost (the cache not
    showing it yet): the release still finds the host and frees it, instead of leaving it
    consumed by a consumer that no longer exists."""
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await put_host(client, namespace, "a")
        async with engine_on(kubeconfig, namespace) as engine:
            c = consumer(namespace, "claim")
            before = engine.host(namespace, "a")
            assert before is not None
            lose_answer_of_first_claim(engine, monkeypatch)
            with pytest.raises(ApiError):
                await engine.bind(request(c, host_fields={"image": IMAGE, "online": True}))
            await lag_cache(engine, before, "the watch to show a claimed")
            assert engine.bound_host(c) is None  # the cache does not show it
            assert await engine.release(c) is True
        host = await client.get(BAREMETALHOSTS, namespace, "a")
        assert "consumerRef" not in host["spec"] and "image" not in host["spec"]


async def test_a_failed_claim_write_leaves_the_host_to_others(
    kubeconfig: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim write that fails before reaching the server (the connection refused) raises to
    the caller, and the host is not left marked as being claimed by this process: the next
    consumer binds it at once."""
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await put_host(client, namespace, "a")
        async with engine_on(kubeconfig, namespace) as engine:
            replace = engine.client.replace

            async def refused(resource: Any, obj: Any, **kw: Any) -> Any:
                raise ConnectionRefusedError("API server not reachable")

            monkeypatch.setattr(engine.client, "replace", refused)
            with pytest.raises(ConnectionRefusedError):
                await engine.bind(request(consumer(namespace, "first")))
            monkeypatch.setattr(engine.client, "replace", replace)
            # (were it still marked, the bind would wait for that claim, then give up: None)
            second = await engine.bind(request(consumer(namespace, "second")))
            assert second.host is not None and second.host["metadata"]["name"] == "a"
        consumed = await consumers_of_hosts(client, namespace)
        assert {h: r["name"] for h, r in consumed.items()} == {"a": "second"}
