"""What `metal3 demo` runs: standalone mode in a temporary directory, the examples applied, and
the hosts' states shown (a live table on a terminal, one line per change otherwise) while they
are provisioned and deleted; per-phase timings at the end.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

import metal3
from metal3.api.manifests import iter_folder
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


def host_state(obj: dict[str, Any]) -> str:
    return str(((obj.get("status") or {}).get("provisioning") or {}).get("state") or "")


def settled_state(obj: dict[str, Any]) -> str:
    """Where a host should end up once the operator is done with its spec."""
    spec = obj.get("spec") or {}
    if spec.get("externallyProvisioned"):
        return "externally provisioned"
    if spec.get("online") and (spec.get("image") or spec.get("customDeploy")):
        return "provisioned"
    return "available"


class Board:
    """The hosts' current states, shown live (terminal) or as a log of changes (plain)."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.hosts: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()
        self.phase = ""
        self._drawn_lines = 0
        self._waiters: list[anyio.Event] = []

    async def changed(self) -> None:
        """Return after the next update."""
        waiter = anyio.Event()
        self._waiters.append(waiter)
        await waiter.wait()

    def update(self, name: str, obj: dict[str, Any] | None) -> None:
        for waiter in self._waiters:
            waiter.set()
        self._waiters.clear()
        before = self.hosts.get(name)
        if obj is None:
            self.hosts.pop(name, None)
            if before is not None and not self.live:
                self._line(f"{name:<18} deleted")
        else:
            self.hosts[name] = obj
            old = (host_state(before), _power(before)) if before else None
            new = (host_state(obj), _power(obj))
            if not self.live and old != new:
                error = (obj.get("status") or {}).get("errorType") or ""
                self._line(f"{name:<18} {new[0] or 'new':<24} power {new[1]:<4} {error}")
        if self.live:
            self.draw()

    def _line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.2f}s] {text}", flush=True)

    def draw(self) -> None:
        rows = [f"{'HOST':<18} {'STATE':<24} {'POWER':<6} {'CONSUMER/IMAGE':<34} ERROR"]
        for name in sorted(self.hosts):
            obj = self.hosts[name]
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            image = (spec.get("image") or {}).get("url", "") or (
                spec.get("customDeploy") or {}
            ).get("method", "")
            rows.append(
                f"{name:<18} {host_state(obj) or '-':<24} {_power(obj):<6} "
                f"{image.rsplit('/', 1)[-1][:34]:<34} {status.get('errorType', '')}"
            )
        rows.append(f"-- {self.phase}  ({time.monotonic() - self.started:5.1f}s)")
        out = sys.stdout
        if self._drawn_lines:
            out.write(f"\x1b[{self._drawn_lines}F\x1b[J")
        out.write("\n".join(rows) + "\n")
        out.flush()
        self._drawn_lines = len(rows)

    def announce(self, phase: str) -> None:
        self.phase = phase
        if self.live:
            self._drawn_lines = 0
            print(f"\n== {phase}", flush=True)
            self.draw()
        else:
            print(f"\n== {phase}", flush=True)


def _power(obj: dict[str, Any] | None) -> str:
    if not obj or "status" not in obj:
        return "-"
    return "on" if obj["status"].get("poweredOn") else "off"


async def follow(client: KubeClient, namespace: str, board: Board) -> None:
    """Feed the board from a watch on the hosts, forever."""
    items, version = await client.list(BAREMETALHOSTS, namespace)
    for obj in items:
        board.update(obj["metadata"]["name"], obj)
    while True:
        async for event in client.watch(BAREMETALHOSTS, namespace, resource_version=version):
            version = event.object.get("metadata", {}).get("resourceVersion", version)
            if event.type == "BOOKMARK":
                continue
            name = event.object["metadata"]["name"]
            board.update(name, None if event.type == "DELETED" else event.object)


async def wait_until(
    board: Board, done: Callable[[dict[str, dict[str, Any]]], bool], seconds: float
) -> bool:
    with anyio.move_on_after(seconds):
        while not done(board.hosts):
            await board.changed()
        return True
    return False


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
                operator=OperatorOptions(settings=DEMO_SETTINGS, health_address=None),
            ),
            factory,
        )
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(standalone.run, stop)
            await standalone.ready.wait()
            print(f"metal3 {metal3.__version__}: embedded API server at {standalone.url}")
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
        f"  hosts: {len(hosts)}, images written: {provisions}, every host deleted: "
        f"{'yes' if not board.hosts else 'no'}"
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
