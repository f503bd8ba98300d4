"""Leader election against a real `metal3 apiserver`, with the candidates' clocks skewed.

Candidate "a" reaches the API server through a TCP forwarder the test can freeze (a network
partition: requests hang, nothing fails fast); candidate "b" connects directly and its wall
clock is off by three lease durations. Expiry must be judged on each candidate's own clock, so
the skew must change nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from anyio.abc import ByteStream, SocketAttribute, SocketStream, TaskStatus

from apiserver.apiserver_kit import REPO, ServerProcess
from metal3.kube.client import KubeClient
from metal3.kube.leader import LeaderElector, LostLeadership
from metal3.kube.resources import LEASES, NAMESPACES

pytestmark = pytest.mark.anyio

LEASE_DURATION = 3  # whole seconds: the Lease API has no finer unit
RENEW_DEADLINE = 2.0
RETRY_PERIOD = 0.25
SKEW = 3 * LEASE_DURATION
SLACK = 1.0  # scheduling and request latency on a loaded 2-core machine
LEASE = "metal3-operator"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("leader") / "data", REPO / "crds", [])
    proc.start()
    yield proc
    proc.stop()


class FreezableForwarder:
    """Forwards TCP connections on 127.0.0.1 to the API server until frozen; from then on it
    holds every byte in both directions, so requests hang as in a network partition."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._open = anyio.Event()
        self._open.set()

    def freeze(self) -> None:
        self._open = anyio.Event()

    async def serve(self, *, task_status: TaskStatus[int]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        task_status.started(listener.extra(SocketAttribute.local_port))
        await listener.serve(self._forward)

    async def _forward(self, downstream: SocketStream) -> None:
        with suppress(OSError):
            async with (
                downstream,
                await anyio.connect_tcp("127.0.0.1", self.upstream_port) as upstream,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(self._pump, downstream, upstream, tg.cancel_scope)
                tg.start_soon(self._pump, upstream, downstream, tg.cancel_scope)

    async def _pump(self, source: ByteStream, sink: ByteStream, scope: anyio.CancelScope) -> None:
        with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            async for chunk in source:
                await self._open.wait()
                await sink.send(chunk)
        scope.cancel()  # one side closed: close the other


def kubeconfig_via(server: ServerProcess, port: int, path: Path) -> Path:
    config: dict[str, Any] = yaml.safe_load(server.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    return path


async def new_namespace(client: KubeClient) -> str:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    await client.create(
        NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    return name


def wall_clock(offset: float) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + timedelta(seconds=offset)


def elector(
    client: KubeClient,
    namespace: str,
    identity: str,
    *,
    wall_offset: float,
    monotonic_offset: float,
) -> LeaderElector:
    return LeaderElector(
        client,
        namespace,
        LEASE,
        identity,
        lease_duration=LEASE_DURATION,
        renew_deadline=RENEW_DEADLINE,
        retry_period=RETRY_PERIOD,
        wall_clock=wall_clock(wall_offset),
        monotonic=lambda: time.monotonic() + monotonic_offset,
    )


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["standby-clock-ahead", "standby-clock-behind"])
async def test_skewed_clocks_never_give_two_leaders_and_hand_over_within_one_lease(
    server: ServerProcess, tmp_path: Path, skew: float
) -> None:
    forwarder = FreezableForwarder(server.port)
    async with anyio.create_task_group() as outer:
        port = await outer.start(forwarder.serve)
        via_forwarder = kubeconfig_via(server, port, tmp_path / "kubeconfig")
        async with (
            await KubeClient.connect(str(server.kubeconfig)) as direct,
            await KubeClient.connect(str(via_forwarder)) as partitionable,
        ):
            namespace = await new_namespace(direct)
            a = elector(partitionable, namespace, "a", wall_offset=0, monotonic_offset=0)
            b = elector(direct, namespace, "b", wall_offset=skew, monotonic_offset=-5000.0)
            with anyio.fail_after(10):
                await a.acquire()

            both_leading: list[float] = []
            a_lost: list[tuple[float, str]] = []
            b_took: list[tuple[float, bool]] = []

            async def sample() -> None:
                while True:
                    if a.is_leader and b.is_leader:
                        both_leading.append(time.monotonic())
                    await anyio.sleep(0.005)

            async def renew_a() -> None:
                try:
                    await a.keep_renewing()
                except LostLeadership as exc:
                    a_lost.append((time.monotonic(), str(exc)))

            async def run_b() -> None:
                await b.acquire()
                b_took.append((time.monotonic(), a.is_leader))

            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                tg.start_soon(renew_a)
                tg.start_soon(run_b)
                await anyio.sleep(1.5 * LEASE_DURATION)
                assert not b_took, "the standby took a lease its holder kept renewing"
                assert a.is_leader and not a_lost

                frozen_at = time.monotonic()
                forwarder.freeze()  # "a" can no longer renew; its requests hang
                with anyio.move_on_after(LEASE_DURATION + 2 * RETRY_PERIOD + SLACK):
                    while not b_took:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()

            assert b_took, "the standby did not take over within one lease duration"
            took_at, a_leading_then = b_took[0]
            assert not a_leading_then, "the standby took over while the leader still acted"
            assert both_leading == []
            # The old leader gave up by itself at its renew deadline, before the takeover.
            assert a_lost, "the partitioned leader never noticed it could not renew"
            lost_at, why = a_lost[0]
            assert "in time" in why
            assert lost_at - frozen_at <= RENEW_DEADLINE + SLACK
            assert lost_at < took_at
            assert not a.is_leader and b.is_leader

            lease = await direct.get(LEASES, namespace, LEASE)
            assert lease["spec"]["holderIdentity"] == "b"
            assert lease["spec"]["leaseTransitions"] == 1
            assert lease["spec"]["leaseDurationSeconds"] == LEASE_DURATION
            # "b" stamped the times with its own (skewed) wall clock.
            acquired = datetime.fromisoformat(lease["spec"]["acquireTime"].replace("Z", "+00:00"))
            assert abs((acquired - datetime.now(UTC)).total_seconds() - skew) < LEASE_DURATION
        outer.cancel_scope.cancel()


async def test_a_released_lease_is_taken_at_once_and_not_renewed_again(
    server: ServerProcess,
) -> None:
    async with await KubeClient.connect(str(server.kubeconfig)) as client:
        namespace = await new_namespace(client)
        a = elector(client, namespace, "a", wall_offset=0, monotonic_offset=0)
        b = elector(client, namespace, "b", wall_offset=-SKEW, monotonic_offset=0)
        with anyio.fail_after(10):
            await a.acquire()
        renewing_ended = anyio.Event()

        async def renew_a() -> None:
            await a.keep_renewing()  # LostLeadership would fail the test here
            renewing_ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(renew_a)
            await anyio.sleep(2 * RETRY_PERIOD)
            await a.release()
            assert not a.is_leader
            with anyio.fail_after(RETRY_PERIOD + SLACK):
                await renewing_ended.wait()  # the release ended the renewal loop
        started = time.monotonic()
        with anyio.fail_after(10):
            await b.acquire()
        # A free lease needs no expiry: the first attempt after the release takes it.
        assert time.monotonic() - started < LEASE_DURATION
        lease = await client.get(LEASES, namespace, LEASE)
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
        assert not a.is_leader and b.is_leader


async def test_the_leader_stops_at_once_when_another_holds_the_lease(
    server: ServerProcess,
) -> None:
    async with await KubeClient.connect(str(server.kubeconfig)) as client:
        namespace = await new_namespace(client)
        a = elector(client, namespace, "a", wall_offset=0, monotonic_offset=0)
        with anyio.fail_after(10):
            await a.acquire()
        lease = await client.get(LEASES, namespace, LEASE)
        lease["spec"]["holderIdentity"] = "someone-else"  # e.g. an administrator's kubectl edit
        await client.replace(LEASES, lease)
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(LostLeadership, match="held by someone-else"):
            await a.keep_renewing()
        assert time.monotonic() - started < RENEW_DEADLINE
        assert not a.is_leader


@pytest.mark.parametrize(
    ("lease_duration", "renew_deadline", "retry_period"),
    [(10.0, 10.0, 2.0), (15.0, 10.0, 10.0), (15.0, 10.0, 0.0)],
)
def test_timings_that_would_allow_two_leaders_are_refused(
    lease_duration: float, renew_deadline: float, retry_period: float
) -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaderElector(
            None,  # type: ignore[arg-type]  # refused before the client is used
            "ns",
            LEASE,
            "a",
            lease_duration=lease_duration,
            renew_deadline=renew_deadline,
            retry_period=retry_period,
        )
