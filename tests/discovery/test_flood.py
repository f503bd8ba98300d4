"""A flood of unknown lookups: 1000 lookups with distinct MACs within seconds, from a few
simulated systems (each with a stable system UUID and serial), against the agent API over
TLS. At most one host per system, never more new systems than the per-minute cap, and every
lookup past the cap gets 429 with Retry-After. The per-client rate limit is off here (all
lookups come from 127.0.0.1) so that what is measured is discovery's own cap."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from discovery.kit import inventory, serving
from metal3.agent.client import AgentApiError, AgentClient
from metal3.kube.resources import BAREMETALHOSTS

pytestmark = pytest.mark.anyio

SYSTEMS = 8
CAP = 5
LOOKUPS = 1000
THREADS = 4


def mac(n: int) -> str:
    return f"02:f1:{n >> 16 & 0xFF:02x}:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}:00"


async def test_a_flood_of_lookups_makes_at_most_one_host_per_system_within_the_cap(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    systems = [(str(uuid.uuid4()), f"FLOOD-{namespace}-{s}") for s in range(SYSTEMS)]
    async with serving(kubeconfig, namespace, tmp_path, per_minute=CAP) as s:
        clients: list[AgentClient] = []
        local = threading.local()

        def client() -> AgentClient:
            """One keep-alive connection per thread (a client is not thread-safe)."""
            if not hasattr(local, "client"):
                local.client = AgentClient(s.url, ca_file=s.ca_file)
                clients.append(local.client)
            found: AgentClient = local.client
            return found

        def lookup(n: int) -> tuple[int, int, str | None, str]:
            system_uuid, serial = systems[n % SYSTEMS]
            body = {"mac_addresses": [mac(n)], "system_uuid": system_uuid, "serial_number": serial}
            try:
                answer = client().request("POST", "/v1/lookup", body)
            except AgentApiError as exc:
                assert exc.status != 429 or exc.retry_after is not None, exc
                return n, exc.status or 0, None, exc.message
            return n, 200, answer["discovery"]["token"], ""

        def flood(numbers: range) -> tuple[list[tuple[int, int, str | None, str]], float]:
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
                futures = [pool.submit(lookup, n) for n in numbers]
                done = [f.result() for f in futures]
            return done, time.monotonic() - started

        try:
            results, seconds = await s.call(lambda: flood(range(LOOKUPS)))
            statuses = Counter(status for _, status, _, _ in results)
            by_system: dict[int, Counter[int]] = defaultdict(Counter)
            tokens: dict[int, tuple[int, str]] = {}
            for n, status, token, _ in results:
                by_system[n % SYSTEMS][status] += 1
                if token is not None:
                    tokens[n % SYSTEMS] = (n, token)  # the newest token of the system
            print(
                f"\nflood: {LOOKUPS} lookups in {seconds:.2f} s ({LOOKUPS / seconds:.0f}/s), "
                f"statuses {dict(statuses)}"
            )
            assert set(statuses) <= {200, 429}, statuses
            admitted = {system for system, counts in by_system.items() if counts[200]}
            assert len(admitted) == CAP  # the first CAP systems; every lookup of the others: 429
            for system, counts in by_system.items():
                assert (counts[200] == 0) == (system not in admitted), (system, counts)
                assert counts[429] == 0 or system not in admitted, (system, counts)

            # Each admitted system sends its inventory, twice and at once (two agents).
            def send(system: int) -> str:
                n, token = tokens[system]
                doc = inventory([mac(n)], serial=systems[system][1])
                try:
                    answer: dict[str, Any] = client().send_inventory(token, doc)
                except AgentApiError as exc:
                    return f"refused {exc.status}"
                return "created" if answer["created"] else "already"

            def send_all() -> list[str]:
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    return list(pool.map(send, sorted(admitted) * 2))

            outcomes = Counter(await s.call(send_all))
            assert outcomes == {"created": CAP, "already": CAP}, outcomes

            # A second wave from the same systems, new MACs again: nothing new.
            again, _ = await s.call(lambda: flood(range(LOOKUPS, LOOKUPS + 200)))
            for n, status, _, message in again:
                expected = 409 if n % SYSTEMS in admitted else 429
                assert status == expected, (n, status, message)
        finally:
            for client in clients:
                client.close()
        hosts, _ = await s.client.list(BAREMETALHOSTS, namespace)
        names = {h["metadata"]["name"] for h in hosts}
        assert len(hosts) == CAP, names
        assert names == {systems[system][1].lower() for system in admitted}
        assert s.api.discovery is not None
        print(
            f"flood: hosts created {s.api.discovery.created}, lookups refused by the cap "
            f"{s.api.discovery.admissions.capped}"
        )
