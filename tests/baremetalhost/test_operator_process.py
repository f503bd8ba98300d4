"""The operator as a process: health and metrics endpoints, leader election, clean SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio
import pytest

from baremetalhost.kit import FAST, cluster, host
from metal3.kube.resources import LEASES
from metal3.operator import Operator, OperatorOptions
from metal3.provisioner.fixture import FixtureProvisionerFactory

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_cli_operator_serves_health_metrics_and_stops_on_sigterm(
    kubeconfig: Path, namespace: str
) -> None:
    port = free_port()
    async with cluster(kubeconfig, namespace) as c:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metal3", "operator", "--kubeconfig", str(kubeconfig),
             "--namespace", namespace, "--health-addr", f"127.0.0.1:{port}",
             "--grace-period", "5", "--provisioner", "fixture"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            await c.apply_host(host("p1", namespace))
            await c.wait_state("p1", "available", timeout=30)
            status, body = await anyio.to_thread.run_sync(
                http_get, f"http://127.0.0.1:{port}/readyz"
            )
            assert (status, body) == (200, "ok")
            status, _ = await anyio.to_thread.run_sync(http_get, f"http://127.0.0.1:{port}/healthz")
            assert status == 200
            status, metrics = await anyio.to_thread.run_sync(
                http_get, f"http://127.0.0.1:{port}/metrics"
            )
            assert status == 200
            assert (
                'metal3_provisioning_state_change_total{from="inspecting",to="preparing"}'
                in metrics
            )
            assert "metal3_reconcile_total" in metrics
            assert "controller_runtime_reconcile_time_seconds_bucket" in metrics
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=20))
            assert code == 0
            assert time.monotonic() - started < 10
        finally:
            if proc.poll() is None:
                proc.kill()
            output = proc.communicate()[0]
        assert "Traceback" not in output, output


async def test_only_the_leader_acts_and_a_standby_takes_over(
    kubeconfig: Path, namespace: str
) -> None:
    options = OperatorOptions(
        kubeconfig=str(kubeconfig),
        namespace=namespace,
        leader_elect=True,
        leader_election_namespace=namespace,
        settings=FAST,
        grace_period=2.0,
    )
    async with cluster(kubeconfig, namespace) as c:
        leader = Operator(options, FixtureProvisionerFactory(c.world))
        standby = Operator(options, FixtureProvisionerFactory(c.world))
        stop_leader, stop_standby = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader.run, stop_leader)
            await leader.started.wait()
            assert leader.manager is not None
            with anyio.fail_after(15):
                while not leader.manager.ready:
                    await anyio.sleep(0.05)
            tg.start_soon(standby.run, stop_standby)
            await standby.started.wait()
            await c.apply_host(host("l1", namespace))
            await c.wait_state("l1", "available")
            assert standby.manager is not None and not standby.manager.ready
            assert standby.reconciler is not None
            assert standby.reconciler.controller.reconciles == 0
            lease = await c.client.get(LEASES, namespace, "metal3-operator")
            assert leader.manager.elector is not None
            assert lease["spec"]["holderIdentity"] == leader.manager.elector.identity

            stopped_at = time.monotonic()
            stop_leader.set()  # clean shutdown releases the lease
            with anyio.fail_after(15):
                while not standby.manager.ready:
                    await anyio.sleep(0.05)
            took_over = time.monotonic() - stopped_at
            await c.apply_host(host("l2", namespace))
            await c.wait_state("l2", "available")
            assert standby.reconciler.controller.reconciles > 0
            lease = await c.client.get(LEASES, namespace, "metal3-operator")
            assert standby.manager.elector is not None
            assert lease["spec"]["holderIdentity"] == standby.manager.elector.identity
            assert int(lease["spec"]["leaseTransitions"]) == 1
            # Released, not expired: the standby took over well before the 15 s lease ran out.
            assert took_over < 10
            stop_standby.set()
