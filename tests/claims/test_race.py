"""The claim engine under a race: 40 HostClaims created at once against 30 matching hosts,
`metal3 standalone --concurrency 4` as a process, SIGKILLed once while the claims are being
bound and restarted on the same data directory.

The hardware is the fixture provisioner's (`--provisioner fixture`, simulated hosts): the engine
is under test here, not the hardware, and 35 lab hosts would only make the test slow. What must
hold: 30 claims bound and 10 waiting (NoBareMetalHost); over the whole run, as a watch on the
hosts saw it, no host ever had two consumers and no claim was ever the consumer of two hosts,
the kill and restart included. The test prints claims bound per second (creation to the 30th,
the restart included) and the conflicts the engine retried (its log lines, one per 409; the
restarted process's /metrics counts its own).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from baremetalhost.kit import secret
from claims.claimkit import IMAGE, condition_is, hostclaim, make_namespace
from metal3.kube.client import KubeClient
from metal3.kube.resources import BAREMETALHOSTS, HOSTCLAIMS, HOSTDEPLOYPOLICIES, SECRETS

pytestmark = pytest.mark.anyio

INFRA = "race-infra"
TENANT = "race-tenant"
HOSTS = 30
CLAIMS = 40
TIMEOUT = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Standalone:
    """`metal3 standalone` on one data directory and API port, started again after a kill."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.health_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.kubeconfig = data_dir / "kubeconfig"

    def start(self) -> None:
        self.health_port = free_port()
        log = self.data_dir.parent / f"standalone-{len(self.logs) + 1}.log"
        self.logs.append(log)
        argv = [
            sys.executable, "-m", "metal3", "standalone", "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}", "--health-addr",
            f"127.0.0.1:{self.health_port}", "--provisioner", "fixture", "--concurrency", "4",
            "--grace-period", "5",
        ]  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "kubeconfig: " not in log.read_text(errors="replace"):
            assert self.proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def text(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.health_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())


def fixture_host(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": name, "namespace": INFRA, "labels": labels},
        "spec": {
            "online": True,
            "bmc": {
                "address": f"redfish://10.0.0.1/redfish/v1/Systems/{name}",
                "credentialsName": f"{name}-bmc",
            },
        },
    }


class History:
    """Every consumer each host ever had and every host each claim ever consumed, from a watch
    on the hosts that runs through the kill and restart (re-listing when the watch breaks)."""

    def __init__(self) -> None:
        self.consumers_of: dict[str, set[str]] = {}
        self.hosts_of: dict[str, set[str]] = {}

    def see(self, host: dict[str, Any]) -> None:
        ref = (host.get("spec") or {}).get("consumerRef")
        if not ref:
            return
        name, uid = host["metadata"]["name"], str(ref.get("uid"))
        self.consumers_of.setdefault(name, set()).add(uid)
        self.hosts_of.setdefault(uid, set()).add(name)

    async def follow(self, kubeconfig: Path, *, task_status: Any) -> None:
        started = False
        while True:
            try:
                async with await KubeClient.connect(str(kubeconfig)) as client:
                    items, version = await client.list(BAREMETALHOSTS, INFRA)
                    for item in items:
                        self.see(item)
                    if not started:
                        started = True
                        task_status.started()
                    async for event in client.watch(
                        BAREMETALHOSTS, INFRA, resource_version=version, timeout_seconds=30
                    ):
                        if event.type in ("ADDED", "MODIFIED"):
                            self.see(event.object)
            except Exception:  # the API server died with the kill: list and watch again
                await anyio.sleep(0.2)


async def bound_count(client: KubeClient) -> int:
    items, _ = await client.list(BAREMETALHOSTS, INFRA)
    return sum(1 for h in items if h["spec"].get("consumerRef"))


async def test_forty_claims_thirty_hosts_one_kill(tmp_path: Path) -> None:
    standalone = Standalone(tmp_path / "data")
    await anyio.to_thread.run_sync(standalone.start)
    history = History()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(history.follow, standalone.kubeconfig)
            figures = await _race(standalone)
            tg.cancel_scope.cancel()
    finally:
        await anyio.to_thread.run_sync(standalone.stop)
    logs = standalone.text()
    assert "Traceback" not in logs, logs[-5000:]
    # Over the whole run: no host with two consumers, no claim with two hosts.
    assert all(len(uids) == 1 for uids in history.consumers_of.values()), history.consumers_of
    assert all(len(hosts) == 1 for hosts in history.hosts_of.values()), history.hosts_of
    assert len(history.hosts_of) == HOSTS
    conflicts = len(re.findall(r"conflict on host", logs))
    binds = len(re.findall(r"HostClaim \S+ bound to host", logs))
    # Each bind logged once; one whose answer the kill swallowed (at most one per worker) not.
    assert HOSTS - 4 <= binds <= HOSTS, binds
    print(
        f"\nrace: {HOSTS} of {CLAIMS} claims bound in {figures['seconds']:.1f} s "
        f"({HOSTS / figures['seconds']:.1f} claims/s, one SIGKILL + restart included, "
        f"{figures['bound_at_kill']} bound at the kill); conflicts retried: {conflicts} "
        f"({figures['conflicts_after_restart']} after the restart, per /metrics)"
    )


async def _race(standalone: Standalone) -> dict[str, Any]:
    async with await KubeClient.connect(str(standalone.kubeconfig)) as client:
        await make_namespace(client, INFRA)
        await make_namespace(client, TENANT)
        await client.create(
            HOSTDEPLOYPOLICIES,
            {
                "apiVersion": "metal3.io/v1alpha1",
                "kind": "HostDeployPolicy",
                "metadata": {"name": "tenants", "namespace": INFRA},
                "spec": {"hostClaimNamespaces": {"names": [TENANT]}},
            },
        )
        names = [f"host-{i:02d}" for i in range(HOSTS + 5)]
        for i, name in enumerate(names):
            await client.create(SECRETS, secret(f"{name}-bmc", INFRA))
            pool = "race" if i < HOSTS else "other"  # 5 hosts no claim may take
            await client.create(BAREMETALHOSTS, fixture_host(name, {"pool": pool}))

        async def all_available() -> bool:
            items, _ = await client.list(BAREMETALHOSTS, INFRA)
            states = [
                ((h.get("status") or {}).get("provisioning") or {}).get("state") for h in items
            ]
            return states.count("available") == len(names)

        with anyio.fail_after(TIMEOUT):
            while not await all_available():
                await anyio.sleep(0.5)

        started = time.monotonic()
        selector = {"matchLabels": {"pool": "race"}}
        async with anyio.create_task_group() as tg:
            for i in range(CLAIMS):
                claim = hostclaim(f"claim-{i:02d}", TENANT, selector, image=IMAGE)
                tg.start_soon(client.create, HOSTCLAIMS, claim)

        # Kill the operator in the middle of the binding, then start it on the same directory.
        with anyio.fail_after(TIMEOUT):
            while (bound_at_kill := await bound_count(client)) < 8:
                await anyio.sleep(0.02)
        await anyio.to_thread.run_sync(standalone.kill)
        await anyio.to_thread.run_sync(standalone.start)

    # The kubeconfig is the same (same directory and port); reconnect after the restart.
    async with await KubeClient.connect(str(standalone.kubeconfig)) as client:

        async def tally() -> tuple[int, int, list[dict[str, Any]]]:
            claims, _ = await client.list(HOSTCLAIMS, TENANT)
            bound = [
                c
                for c in claims
                if condition_is(c, "Associated", "True", "BareMetalHostAssociated")
            ]
            waiting = [
                c for c in claims if condition_is(c, "Associated", "False", "NoBareMetalHost")
            ]
            return len(bound), len(waiting), claims

        with anyio.fail_after(TIMEOUT):
            while (await bound_count(client)) < HOSTS:
                await anyio.sleep(0.05)
        seconds = time.monotonic() - started
        with anyio.fail_after(TIMEOUT):
            while (await tally())[:2] != (HOSTS, CLAIMS - HOSTS):
                await anyio.sleep(0.2)
        await anyio.sleep(3)  # and it stays so
        bound, waiting, claims = await tally()
        assert (bound, waiting) == (HOSTS, CLAIMS - HOSTS)

        hosts, _ = await client.list(BAREMETALHOSTS, INFRA)
        by_uid = {h["spec"]["consumerRef"]["uid"]: h for h in hosts if h["spec"].get("consumerRef")}
        assert len(by_uid) == HOSTS
        assert all(h["metadata"]["labels"]["pool"] == "race" for h in by_uid.values())
        for claim in claims:
            host = by_uid.get(claim["metadata"]["uid"])
            recorded = (claim.get("status") or {}).get("bareMetalHost")
            if host is None:
                assert recorded is None, claim
            else:
                assert recorded == {"namespace": INFRA, "name": host["metadata"]["name"]}
                assert host["spec"]["consumerRef"]["name"] == claim["metadata"]["name"]

    metrics = await anyio.to_thread.run_sync(standalone.metrics)
    found = re.search(r'^metal3_claims_conflicts_total\{kind="HostClaim"\} (\S+)$', metrics, re.M)
    assert "metal3_claims_binds_total" in metrics
    return {
        "seconds": seconds,
        "bound_at_kill": bound_at_kill,
        "conflicts_after_restart": int(float(found.group(1))) if found else 0,
    }
