"""The operator at fleet scale: hosts created → available with the fixture provisioner on the
embedded API server (a real `metal3 apiserver` process), operator in this process.

Reports hosts/min, reconciles/s, p50/p99 time from creation to available per host, and peak RSS
of both processes. Targets (full mode, 1000 hosts): all available within 60 s, ≥ 500
reconciles/s.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from apiserver.apiserver_kit import ServerProcess
from baremetalhost.kit import FAST, cluster, host, running_operator, state
from metal3.kube.resources import BAREMETALHOSTS

QUICK = os.environ.get("METAL3_BENCH_QUICK") == "1"
HOSTS = 100 if QUICK else 1000
REPO = Path(__file__).resolve().parents[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def create_hosts(c: Any, namespace: str, names: list[str], created: dict[str, float]) -> None:
    """Create the hosts (and their Secrets) 16 at a time, as a fleet import would."""
    limiter = anyio.CapacityLimiter(16)

    async def one(name: str) -> None:
        async with limiter:
            created[name] = time.perf_counter()
            await c.apply_host(host(name, namespace))

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(one, name)


async def fleet_to_available(kubeconfig: Path, *, backlog: bool) -> dict[str, Any]:
    """Live: hosts are created while the operator runs. Backlog: all exist before it starts,
    so reconciles/s shows the operator's own capacity."""
    namespace = "backlog" if backlog else "live"
    names = [f"node-{i:04d}" for i in range(HOSTS)]
    async with cluster(kubeconfig, namespace) as c:
        created: dict[str, float] = {}
        if backlog:
            await create_hosts(c, namespace, names, created)
        settings = replace(FAST, provisioning_limit=HOSTS, power_poll_interval=600.0)
        async with running_operator(
            kubeconfig, c.world, namespace=namespace, settings=settings, concurrency=8
        ) as operator:
            available: dict[str, float] = {}
            _, version = await c.client.list(BAREMETALHOSTS, namespace)

            async def watch() -> None:
                nonlocal version
                while len(available) < HOSTS:
                    async for event in c.client.watch(
                        BAREMETALHOSTS, namespace, resource_version=version, timeout_seconds=120
                    ):
                        version = event.object["metadata"].get("resourceVersion", version)
                        name = event.object["metadata"]["name"]
                        if state(event.object) == "available" and name not in available:
                            available[name] = time.perf_counter()
                            if len(available) == HOSTS:
                                return

            assert operator.reconciler is not None
            controller = operator.reconciler.controller
            start_reconciles = controller.reconciles
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                if not backlog:
                    await create_hosts(c, namespace, names, created)
                with anyio.fail_after(600):
                    while len(available) < HOSTS:
                        await anyio.sleep(0.05)
            elapsed = time.perf_counter() - started
            reconciles = controller.reconciles - start_reconciles
    if backlog:  # the clock starts with the operator
        created = dict.fromkeys(created, started)
    per_host = sorted(available[n] - created[n] for n in created)
    return {
        "mode": namespace,
        "hosts": HOSTS,
        "seconds": round(elapsed, 2),
        "hosts_per_min": round(HOSTS / elapsed * 60, 1),
        "reconciles": reconciles,
        "reconciles_per_s": round(reconciles / elapsed, 1),
        "p50_s": round(statistics.median(per_host), 3),
        "p99_s": round(per_host[int(len(per_host) * 0.99) - 1], 3),
        "operator_peak_rss_mib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }


@pytest.fixture
def fleet_server(tmp_path: Path) -> Any:
    server = ServerProcess(tmp_path / "data", REPO / "crds", [])
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("backlog", [False, True], ids=["live", "backlog"])
def test_fleet_created_to_available(
    benchmark: Any, fleet_server: ServerProcess, backlog: bool
) -> None:
    results: dict[str, Any] = {}

    def run() -> None:
        results.update(
            anyio.run(lambda: fleet_to_available(fleet_server.kubeconfig, backlog=backlog))
        )

    benchmark.pedantic(run, rounds=1, iterations=1)
    assert fleet_server.proc is not None
    results["apiserver_peak_rss_mib"] = round(rss_mib(fleet_server.proc.pid), 1)
    benchmark.extra_info.update(results)
    print("\nfleet:", results)
    assert results["hosts"] == HOSTS
    assert results["reconciles"] >= HOSTS * 4  # register, inspect, prepare, available at least
