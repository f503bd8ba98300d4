"""Chaos: `metal3 standalone --lab DIR` killed with SIGKILL at random points while 10 lab
hosts go through their whole lifecycle; every host converges and each image is written
exactly once per provisioning.

The process killed is `metal3 standalone`: the operator and the API server in one process
(the API server's store is SQLite on disk), so each kill also takes the API server down
mid-request and every restart reloads the store, relists and rebuilds the provisioner's
per-host state (BMC sessions, timers) from the BMCs, the agents' records and the hosts'
status. That is harsher than killing an operator beside a surviving API server. The agents
keep running on the lab's hosts across kills (they retry while the operator is away).

The lab: `metal3 lab up --hosts 10` with 6 Redfish (network boot), 2 Redfish virtual-media
and 2 IPMI hosts, `--power-delay 0`. The image: a 32 MiB GPT disk with an ext4 root made
with sgdisk/mkfs.ext4 and converted with `qemu-img` to qcow2, served from `DIR/images` at
the URL `DIR/images/URL` gives, with its sha256. The manifests `lab up` wrote are applied
with `online: true`, the image and user data, so each host goes register -> inspect ->
prepare (metadata cleaning) -> available -> provision -> provisioned; then all are deleted
(deprovision with cleaning, power off, gone).

Kills are triggered by what the hosts are doing, each after a delay drawn from a seeded RNG
(the seed is printed; METAL3_CHAOS_SEED=N draws the same delays again): while hosts
register/inspect, while they prepare, within half a second of an agent starting its deploy
(while it writes, most often), once some are provisioned, while they deprovision, and once
some are gone. After each kill a new process starts on the same data directory.

What counts as a write: the agent streams the image onto the disk from one HTTP GET of the
whole file (no Range header), so a GET without Range answered 200 that sent the whole file
(`bytes` = its size in the lab image server's `DIR/images/access.log`) is one complete write.
Before it writes, each deploy reads the image's header to check its size against the disk
(`metal3.imagestream.info`): a GET with `Range: bytes=0-65535` (the lab's server answers
206), never a GET without Range. So, per host (its client IP in the log): exactly one GET
without Range, and it sent the whole image (a write cut off half way would be a second one,
and could only be redone by a new deploy run); one header probe per deploy run; and exactly
one deploy run in the host's agent log (`DIR/hosts/NAME/agent.log`, kept across the host's
boots). Other GETs with a Range header fetch only that part (the writer may read pieces of an
image's layout ahead of the stream): they write nothing by themselves, and are reported, not
counted. Independently, each disk holds the image's bytes (`qemu-img convert -O raw`) and a
config drive (`blkid`: iso9660 labelled config-2; `bsdtar`: meta_data.json names the host,
user_data is what the host's Secret holds).
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml

from apiserver.apiserver_kit import current_kubectl
from baremetalhost.kit import state
from metal3.bmc.emulators import free_port
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS
from provisioner.harness import Image, make_qcow2
from provisioner.labkit import (
    LabRun,
    StandaloneProcess,
    alive,
    client_ip,
    image_on_disk,
    lab_up,
    read_config_drive,
    user_data_secret,
    whole_gets,
)

pytestmark = pytest.mark.anyio

NAMESPACE = "chaos"
HOSTS = 10
PROBE_RANGE = "bytes=0-65535"  # the deploy's header probe (`metal3.imagestream.info`)
Snapshot = dict[str, dict[str, Any]]  # host name -> BareMetalHost (absent: gone)


def user_data(host: str) -> bytes:
    return f"#cloud-config\nhostname: {host}\nwrite_files: [{{path: /etc/chaos}}]\n".encode()


@dataclass
class Kill:
    label: str
    at: float  # seconds since the manifests were applied
    states: dict[str, int]  # provisioning state -> hosts, just before the kill
    restart: float  # seconds until the new process served again


@dataclass
class Chaos:
    """Watches the hosts (through whichever standalone process is up) and kills it."""

    client: KubeClient
    standalone: StandaloneProcess
    rng: random.Random
    started: float
    kills: list[Kill] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)  # children of killed processes
    errors: set[tuple[str, str, str]] = field(default_factory=set)  # (host, type, message)

    async def snapshot(self) -> Snapshot | None:
        """The hosts now, or None while the API server is down."""
        try:
            items, _ = await self.client.list(BAREMETALHOSTS, NAMESPACE)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        except ApiError as exc:
            if exc.status < 500:
                raise
            return None
        hosts = {o["metadata"]["name"]: o for o in items}
        for name, obj in hosts.items():
            status = obj.get("status") or {}
            if status.get("errorType"):
                self.errors.add((name, status["errorType"], status.get("errorMessage", "")))
        return hosts

    async def wait(self, what: str, check: Callable[[Snapshot], bool], timeout: float) -> Snapshot:
        last: Snapshot | None = None
        with anyio.move_on_after(timeout):
            while True:
                now = await self.snapshot()
                if now is not None:
                    last = now
                    if check(now):
                        return now
                await anyio.sleep(0.25)
        summary = {name: (state(o), (o.get("status") or {}).get("errorMessage")) for name, o in
                   (last or {}).items()}  # fmt: skip
        raise AssertionError(f"timed out waiting for {what}: {summary}")

    async def kill_when(
        self, label: str, check: Callable[[Snapshot], bool], delay: tuple[float, float]
    ) -> None:
        """Once ``check`` holds, after a random delay in ``delay``: SIGKILL, restart."""
        await self.wait(label, check, timeout=120)
        await anyio.sleep(self.rng.uniform(*delay))
        before = await self.snapshot() or {}
        children = self.standalone.children()
        at = time.monotonic()
        self.standalone.kill()
        self.orphans += children
        await anyio.to_thread.run_sync(self.standalone.start)
        states = collections.Counter(state(o) for o in before.values())
        if len(before) < HOSTS:
            states["<gone>"] += HOSTS - len(before)
        self.kills.append(
            Kill(label, at - self.started, dict(sorted(states.items())), time.monotonic() - at)
        )


def count(hosts: Snapshot, *states: str) -> int:
    return sum(1 for o in hosts.values() if state(o) in states)


def manifests_with_image(lab: LabRun, image: Image, folder: Path) -> None:
    """The lab's manifests, each host made online with the image and its user data."""
    folder.mkdir()
    for name, documents in lab.manifests().items():
        for document in documents:
            if document["kind"] == "BareMetalHost":
                document["spec"].update(
                    online=True,
                    image={"url": lab.image_url(image.name), "checksum": image.sha256,
                           "checksumType": "sha256", "format": "qcow2"},
                    userData={"name": f"{name}-user-data"},
                )  # fmt: skip
        documents.append(user_data_secret(f"{name}-user-data", NAMESPACE, user_data(name)))
        (folder / f"{name}.yaml").write_text(yaml.safe_dump_all(documents))


async def test_sigkilled_standalone_ten_hosts_converge_and_write_each_image_once(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("METAL3_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nchaos seed {seed} (METAL3_CHAOS_SEED={seed} repeats this run's kill delays)")
    rng = random.Random(seed)
    image = await anyio.to_thread.run_sync(
        lambda: make_qcow2(tmp_path, "chaos", size_mib=32, random_mib=8)
    )
    lab_args = ("--hosts", str(HOSTS), "--virtual-media-hosts", "2", "--ipmi-hosts", "2",
                "--power-delay", "0", "--namespace", NAMESPACE)  # fmt: skip
    with lab_up(tmp_path / "lab", *lab_args) as lab:
        kinds = collections.Counter(h["kind"] for h in lab.hosts.values())
        assert kinds == {"redfish": 6, "redfish-virtualmedia": 2, "ipmi": 2}, kinds
        shutil.copy(image.path, lab.images / image.name)
        manifests_with_image(lab, image, tmp_path / "apply")
        standalone = StandaloneProcess(
            tmp_path / "standalone", lab.dir, free_port(), "--agent-timeout", "120"
        )
        try:
            await anyio.to_thread.run_sync(standalone.start)
            apply = [current_kubectl(), "--kubeconfig", str(standalone.kubeconfig), "apply"]
            applied = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [*apply, "-f", str(tmp_path / "apply")], capture_output=True, text=True
                )
            )
            assert applied.returncode == 0, applied.stderr
            async with await KubeClient.connect(str(standalone.kubeconfig)) as client:
                chaos = Chaos(client, standalone, rng, time.monotonic())
                await _lifecycle(chaos, lab, image, tmp_path)
        finally:
            standalone.stop()
        logs = standalone.logs()
        assert "Traceback" not in logs, logs[-8000:]
    print(f"chaos seed {seed}")


async def _lifecycle(chaos: Chaos, lab: LabRun, image: Image, scratch: Path) -> None:
    laps: list[tuple[str, float]] = []
    size = image.path.stat().st_size

    def lap(what: str) -> None:
        laps.append((what, time.monotonic() - chaos.started))

    await chaos.kill_when(
        "registering/inspecting",
        lambda h: len(h) == HOSTS and count(h, "registering", "inspecting") > 0,
        (0.5, 3.0),
    )
    await chaos.kill_when(
        "inspecting/preparing",
        lambda h: count(h, "preparing", "available", "provisioning", "provisioned") > 0,
        (0.0, 2.0),
    )

    def deploying(hosts: Snapshot) -> bool:
        """Some host's agent has begun its deploy (its write takes about a second)."""
        return any(
            state(obj) == "provisioning" and " running deploy " in lab.agent_log(name)
            for name, obj in hosts.items()
        )

    await chaos.kill_when("an agent deploying", deploying, (0.0, 0.5))
    await chaos.kill_when("some provisioned", lambda h: count(h, "provisioned") > 0, (0.0, 1.5))

    def provisioned(hosts: Snapshot) -> bool:
        return count(hosts, "provisioned") == HOSTS and all(
            (o.get("status") or {}).get("poweredOn") for o in hosts.values()
        )

    hosts = await chaos.wait("every host provisioned", provisioned, timeout=180)
    lap("all provisioned")
    # Each host booted its OS from the disk, and its config drive was what it should be.
    uids = {name: o["metadata"]["uid"] for name, o in hosts.items()}
    with anyio.fail_after(60):
        while not all((lab.os_boot(n) or {}).get("booted") for n in lab.hosts):
            await anyio.sleep(0.25)
    disks: dict[str, Path] = {}
    for name in lab.hosts:
        found = lab.os_boot(name)
        assert found is not None
        assert found["hostname"] == name, found
        assert found["user_data_sha256"] == hashlib.sha256(user_data(name)).hexdigest()
        disk = disks[name] = Path(found["disk"])
        assert await anyio.to_thread.run_sync(image_on_disk, disk, image.reference), name
        drive = await anyio.to_thread.run_sync(read_config_drive, disk, scratch)
        assert (drive.fs_type, drive.label) == ("iso9660", "config-2"), (name, drive)
        assert drive.meta_data["uuid"] == uids[name], (name, drive.meta_data)
        assert drive.meta_data["hostname"] == name
        assert drive.user_data == user_data(name)
    failed = {n: o["status"].get("provisioningFailCount") for n, o in hosts.items()}
    assert set(failed.values()) == {0}, failed

    # The image server's log: each host fetched the whole image exactly once.
    by_ip = lab.host_by_ip()
    entries = lab.access_log()
    gets = whole_gets(entries, f"/{image.name}")
    per_host = collections.defaultdict(list)
    for entry in gets:
        per_host[by_ip.get(client_ip(entry), client_ip(entry))].append(entry)
    ranged = collections.Counter(
        by_ip.get(client_ip(e), client_ip(e))
        for e in entries
        if e["path"] == f"/{image.name}" and e["range"]
    )
    assert sorted(per_host) == sorted(lab.hosts), per_host
    probes = collections.Counter(
        by_ip.get(client_ip(e), client_ip(e))
        for e in entries
        if e["path"] == f"/{image.name}" and e["range"] == PROBE_RANGE and e["status"] == 206
    )
    complete: dict[str, int] = {}
    for name, fetched in per_host.items():
        whole = [e for e in fetched if e["status"] == 200 and e["bytes"] == size]
        complete[name] = len(whole)
        assert len(whole) == 1 and fetched == whole, (name, fetched)
        deploys = lab.agent_log(name).count(" running deploy ")
        assert deploys == 1, (name, lab.agent_log(name)[-4000:])
        assert probes[name] == deploys, (name, probes)

    for name in lab.hosts:
        await _retrying(partial(chaos.client.delete, BAREMETALHOSTS, NAMESPACE, name))
    await chaos.kill_when(
        "deprovisioning",
        lambda h: (
            count(h, "deprovisioning", "powering off before delete", "deleting") > 0
            or len(h) < HOSTS
        ),
        (0.5, 3.0),
    )
    await chaos.kill_when("some deleted", lambda h: len(h) < HOSTS, (0.0, 1.5))
    await chaos.wait("every host deleted", lambda h: not h, timeout=180)
    lap("all deleted")

    for name in lab.hosts:
        assert lab.state(name)["power"] == "off", lab.state(name)
    # Nothing the killed processes started outlived them (IPMI workers end with their pipe).
    with anyio.fail_after(15):
        while any(alive(pid) for pid in chaos.orphans):
            await anyio.sleep(0.2)

    print(f"{len(chaos.kills)} kills (seconds since apply, states just before, restart):")
    for kill in chaos.kills:
        print(f"  {kill.at:6.1f} s  {kill.label:24} {kill.states}  restart {kill.restart:.1f} s")
    print(", ".join(f"{what} at {when:.1f} s" for what, when in laps))
    print(
        f"GETs of the whole image ({size} bytes) that sent all of it, per host: "
        + ", ".join(f"{n} {complete[n]}" for n in sorted(complete))
        + f"; header probes (Range {PROBE_RANGE}): {sum(probes.values())}"
        + f"; Range GETs in all: {dict(ranged) or 'none'}"
    )
    print(f"{len(chaos.orphans)} child processes of the killed ones (IPMI workers): all gone")
    if chaos.errors:
        print("errors recorded on the way:", sorted(chaos.errors))
    assert len(chaos.kills) == 6


async def _retrying(call: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> None:
    """``call()`` until the API server answers (it may be restarting)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                await call()
                return
            except (aiohttp.ClientError, OSError):
                await anyio.sleep(0.25)
