"""What `metal3 demo --fixture` runs: the lifecycle simulated, quickly.

Standalone mode in a temporary directory with the fixture provisioner (simulated hardware in
memory: nothing is powered, booted or written), the example manifests applied, and the hosts'
states shown (a live table on a terminal, one line per change otherwise) while they are
provisioned and deleted; per-phase timings at the end. The real lifecycle, on an emulated lab,
is `metal3 demo` (`metal3.cli.demo_lab`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

import metal3
from metal3.api.manifests import iter_folder
from metal3.cli.demo_board import Board, follow, host_state, wait_until
from metal3.controllers.baremetalhost import Settings
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA, NAMESPACES, SECRETS
from metal3.operator import OperatorOptions
from metal3.provisioner.fixture import Behaviour, FixtureProvisionerFactory, FixtureWorld
from metal3.standalone import Standalone, StandaloneOptions

DEMO_IMAGE = {
    "url": "http://images.example.com/debian-13-genericcloud-amd64.qcow2",
    "checksum": "b3f1c0ffee" * 6 + "abcd",
    "checksumType": "sha256",
    "format": "qcow2",
}
# Simulated hardware that takes a visible moment per step (a step is one provisioner poll).
DEMO_BEHAVIOUR = {
    "register": Behaviour(steps=2),
    "inspect": Behaviour(steps=6),
    "prepare": Behaviour(steps=4),
    "provision": Behaviour(steps=8),
    "deprovision": Behaviour(steps=5),
    "power": Behaviour(steps=1),
    "delete": Behaviour(steps=1),
}
DEMO_SETTINGS = Settings(in_progress_poll=0.15, power_poll_interval=1.0, error_backoff_unit=0.5)


def settled_state(obj: dict[str, Any]) -> str:
    """Where a host should end up once the operator is done with its spec."""
    spec = obj.get("spec") or {}
    if spec.get("externallyProvisioned"):
        return "externally provisioned"
    if spec.get("online") and (spec.get("image") or spec.get("customDeploy")):
        return "provisioned"
    return "available"


async def refuse_invalid(
    client: KubeClient, invalid: list[tuple[Path, dict[str, Any]]]
) -> list[str]:
    """Send each invalid example to the API server; each must be refused (422)."""
    if not invalid:
        return []
    print("\n== invalid manifests, refused by the API server's schema validation")
    failures = []
    for path, obj in invalid:
        resource = BAREMETALHOSTS if obj["kind"] == "BareMetalHost" else HARDWAREDATA
        try:
            await client.create(resource, obj)
        except ApiError as exc:
            reason = exc.message.split(" is invalid: ", 1)[-1]
            print(f"  {path.name:<36} {exc.status} {reason[:78]}")
            if exc.status != 422:
                failures.append(f"{path.name}: refused with {exc.status}, not 422")
        else:
            failures.append(f"{path.name}: accepted")
            print(f"  {path.name}: ACCEPTED (wrongly)")
            namespace, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]
            await client.delete(resource, namespace, name)
    return failures


async def demo(
    objects: list[dict[str, Any]],
    invalid: list[tuple[Path, dict[str, Any]]],
    seconds: float,
    live: bool,
) -> int:
    hosts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "BareMetalHost"}
    namespaces = sorted({o["metadata"].get("namespace") or "default" for o in objects})
    world = FixtureWorld()
    factory = FixtureProvisionerFactory(world, dict.fromkeys(hosts, DEMO_BEHAVIOUR))
    timings: list[tuple[str, float]] = []
    failures: list[str] = []
    board = Board(live)
    with tempfile.TemporaryDirectory(prefix="metal3-demo-") as tmp:
        standalone = Standalone(
            StandaloneOptions(
                data_dir=Path(tmp),
                operator=OperatorOptions(
                    provisioner="fixture", settings=DEMO_SETTINGS, health_address=None
                ),
            ),
            factory,
        )
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(standalone.run, stop)
            await standalone.ready.wait()
            print(f"metal3 {metal3.__version__}: embedded API server at {standalone.url}")
            print("  fixture provisioner: simulated hardware; nothing is powered or written")
            print(f"  kubectl --kubeconfig {standalone.kubeconfig} get bmh -A   (while it runs)")
            async with await KubeClient.connect(str(standalone.kubeconfig)) as client:
                for namespace in namespaces:
                    await client.create(
                        NAMESPACES,
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                    )
                async with anyio.create_task_group() as watchers:
                    for namespace in namespaces:
                        watchers.start_soon(follow, client, namespace, board)

                    async def phase(
                        name: str, action: Callable[[], Any], done: Callable[[Any], bool]
                    ) -> None:
                        board.announce(name)
                        started = time.monotonic()
                        await action()
                        if not await wait_until(board, done, seconds):
                            failures.append(f"{name}: timed out")
                        timings.append((name, time.monotonic() - started))

                    async def apply() -> None:
                        for obj in objects:
                            resource = SECRETS if obj["kind"] == "Secret" else BAREMETALHOSTS
                            await client.create(resource, obj)

                    def all_settled(current: dict[str, dict[str, Any]]) -> bool:
                        return set(current) == set(hosts) and all(
                            host_state(o) == settled_state(o)
                            and (o.get("status") or {}).get("poweredOn")
                            == bool((o.get("spec") or {}).get("online"))
                            for o in current.values()
                        )

                    await phase("register, inspect, prepare, provision", apply, all_settled)
                    failures.extend(await refuse_invalid(client, invalid))

                    async def provision_rest() -> None:
                        for name, obj in list(board.hosts.items()):
                            if host_state(obj) == "available":
                                namespace = obj["metadata"]["namespace"]
                                patch = {"spec": {"online": True, "image": DEMO_IMAGE}}
                                await client.patch(BAREMETALHOSTS, namespace, name, patch)

                    def all_running(current: dict[str, dict[str, Any]]) -> bool:
                        return len(current) == len(hosts) and all(
                            host_state(o) in ("provisioned", "externally provisioned")
                            for o in current.values()
                        )

                    await phase("provision the available hosts", provision_rest, all_running)

                    async def delete_all() -> None:
                        for name, obj in list(board.hosts.items()):
                            try:
                                namespace = obj["metadata"]["namespace"]
                                await client.delete(BAREMETALHOSTS, namespace, name)
                            except ApiError as exc:
                                if not exc.not_found:
                                    raise

                    await phase("deprovision and delete", delete_all, lambda current: not current)
                    watchers.cancel_scope.cancel()
            stop.set()

    provisioned_twice = [
        uid for uid, record in world.hosts.items() if record.counts.get("provision", 0) > 1
    ]
    if provisioned_twice:
        failures.append(f"hosts provisioned more than once: {provisioned_twice}")
    for name, obj in board.hosts.items():
        failures.append(f"{name} left in state {host_state(obj)!r}")
    print("\nsummary")
    for name, seconds in timings:
        print(f"  {name:<40} {seconds:6.2f} s")
    provisions = sum(r.counts.get("provision", 0) for r in world.hosts.values())
    print(
        f"  hosts: {len(hosts)}, simulated provisionings: {provisions} (fixture provisioner: "
        f"nothing written), every host deleted: {'yes' if not board.hosts else 'no'}"
    )
    for failure in failures:
        print(f"  UNEXPECTED: {failure}")
    print("demo: ok" if not failures else "demo: FAILED")
    return 0 if not failures else 1


def run_demo(folder: Path, seconds: float, live: bool) -> int:
    """The demo on the manifests in `folder` (its invalid/ subfolder: manifests to be refused)."""
    objects = [o for _, o in iter_folder(folder) if o["kind"] in ("Secret", "BareMetalHost")]
    invalid = list(iter_folder(folder / "invalid")) if (folder / "invalid").is_dir() else []
    return anyio.run(demo, objects, invalid, seconds, live)
