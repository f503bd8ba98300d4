"""Restarts and conflicts: the operator converges however it is interrupted or contended."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from baremetalhost.kit import FAST, IMAGE, cluster, host, running_operator, state
from metal3.kube.client import ApiError
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA

pytestmark = pytest.mark.anyio

HOSTS = 50


async def test_random_operator_kills_converge_without_double_provisioning(
    kubeconfig: Path, namespace: str
) -> None:
    rng = random.Random(20261121)
    names = [f"r{i:02d}" for i in range(HOSTS)]
    # Operations take several polls 50 ms apart, so every host's lifecycle spans several kills
    # however fast the machine is.
    paced = replace(FAST, in_progress_poll=0.05)
    slow = {
        f"fixture.metal3.io/{op}": "steps:5"
        for op in ("inspect", "prepare", "provision", "deprovision", "delete")
    }
    async with cluster(kubeconfig, namespace) as c:
        for name in names:
            await c.apply_host(host(name, namespace, image=IMAGE, annotations=slow))

        async def run_with_kills(done: anyio.Event) -> int:
            kills = 0
            while not done.is_set():
                async with running_operator(
                    kubeconfig, c.world, namespace=namespace, concurrency=4, settings=paced
                ) as operator:
                    # Let it work for a random moment, then stop it mid-flight (short grace).
                    with anyio.move_on_after(rng.uniform(0.1, 0.5)):
                        await done.wait()
                    operator.options.grace_period = 0.0
                kills += 1
            return kills

        async def everyone(predicate_state: str | None) -> bool:
            items, _ = await c.client.list(BAREMETALHOSTS, namespace)
            if predicate_state is None:
                return not items
            return len(items) == HOSTS and all(state(o) == predicate_state for o in items)

        done = anyio.Event()
        kills: list[int] = []

        async def killer() -> None:
            kills.append(await run_with_kills(done))

        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            with anyio.fail_after(120):
                while not await everyone("provisioned"):
                    await anyio.sleep(0.2)
                for name in names:
                    await c.delete(name)
                while not await everyone(None):
                    await anyio.sleep(0.2)
            done.set()
        assert kills[0] >= 3, "the operator must have been killed several times"
        # Every host was provisioned exactly once and deprovisioned exactly once.
        records = list(c.world.hosts.values())
        assert len(records) == HOSTS
        assert sorted({r.counts.get("provision", 0) for r in records}) == [1]
        assert sorted({r.counts.get("deprovision", 0) for r in records}) == [1]
        assert all(not r.registered for r in records), "every host forgotten by the provisioner"
        hardware, _ = await c.client.list(HARDWAREDATA, namespace)
        assert hardware == []


async def test_concurrent_patches_do_not_lose_status_writes(
    kubeconfig: Path, namespace: str
) -> None:
    names = [f"c{i}" for i in range(10)]
    paced = replace(FAST, in_progress_poll=0.02)
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace, settings=paced) as operator,
    ):
        slow = {f"fixture.metal3.io/{op}": "steps:60" for op in ("inspect", "prepare", "provision")}
        for name in names:
            await c.apply_host(host(name, namespace, image=IMAGE, annotations=slow))
        patches = 0
        conflicts = 0

        async def meddle() -> None:
            nonlocal patches, conflicts
            rng = random.Random(7)
            while True:
                name = rng.choice(names)
                obj = await c.get(name)
                if obj is None:
                    continue
                labels = obj["metadata"].get("labels") or {}
                labels["touched"] = str(int(labels.get("touched", "0")) + 1)
                obj["metadata"]["labels"] = labels
                try:
                    await c.client.replace(BAREMETALHOSTS, obj)  # PUT with resourceVersion
                    patches += 1
                except ApiError as exc:
                    assert exc.conflict
                    conflicts += 1
                await c.patch(name, {"metadata": {"annotations": {"meddler": str(patches)}}})
                patches += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(meddle)
            for name in names:
                await c.wait_state(name, "provisioned", timeout=90)
            tg.cancel_scope.cancel()
        assert patches > 20, "the other client must have written while the operator worked"
        for name in names:
            obj = await c.get(name)
            assert obj is not None
            assert obj["status"]["provisioning"]["image"]["url"] == IMAGE["url"]
            assert c.world.count(c.uid(obj), "provision") == 1
        # No reconcile loop: once settled, the operator goes quiet.
        assert operator.reconciler is not None
        controller = operator.reconciler.controller
        await anyio.sleep(0.5)
        before = controller.reconciles
        await anyio.sleep(1.0)
        # Steady hosts are only polled for power (every 0.5 s in the test settings).
        assert controller.reconciles - before <= 3 * len(names)
