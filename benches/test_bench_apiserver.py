"""Embedded API server under load: creates/s, status patches/s, and watch fan-out latency
(1000 BareMetalHosts, 5 watchers; quick mode: 100 hosts).

The server runs as its own process (`metal3 apiserver --insecure-http` on 127.0.0.1, so TLS
cost stays out of the figures); the client is a minimal keep-alive HTTP/1.1 client on asyncio
with 8 connections. The baseline, measured in the same run with the same client, is the rate of
`GET /healthz` (pure HTTP round trips): writes are reported as a ratio of it too.
Latency is from just before a status patch is sent to the moment each watcher has read the
event for it.

Deletion scaling runs in-process on the server's own `Core` and SQLite store: the latency of
deleting one BareMetalHost that owns a Secret (which garbage collection then removes), on a
store of 100 objects and on one of 10 000, interleaved in the same run. Garbage collection
finds dependents through the store's owner index, so the ratio of the two medians stays near 1.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from metal3.apiserver.core import Core
from metal3.apiserver.registry import Registry
from metal3.apiserver.server import preload_crds
from metal3.apiserver.store import Store
from metal3.apiserver.strategies import NAMESPACE_KEY

QUICK = os.environ.get("METAL3_BENCH_QUICK") == "1"
HOSTS = 100 if QUICK else 1000
WATCHERS = 5
CONNECTIONS = 8
REPO = Path(__file__).resolve().parents[1]
NS = "bench"
DELETE_ROUNDS = 21 if QUICK else 101
SMALL, LARGE = 100, 10_000


class Connection:
    """One keep-alive HTTP/1.1 connection; responses carry Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str):
        self.reader = reader
        self.writer = writer
        self.token = token

    @classmethod
    async def open(cls, port: int, token: str) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, token)

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        data = orjson.dumps(body) if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}"
            f"\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def read_chunked_lines(reader: asyncio.StreamReader) -> Any:
    """Yield the JSON lines of a chunked watch response, parsing whole reads at once."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = await reader.read(65536)
        if not data:
            return
        buffer += data
    buffer = buffer.split(b"\r\n\r\n", 1)[1]
    payload = b""
    while True:
        while True:  # take every complete chunk in the buffer
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            size = int(buffer[:end], 16)
            if size == 0:
                return
            if len(buffer) < end + 2 + size + 2:
                break
            payload += buffer[end + 2 : end + 2 + size]
            buffer = buffer[end + 2 + size + 2 :]
        while b"\n" in payload:
            line, payload = payload.split(b"\n", 1)
            yield line
        data = await reader.read(65536)
        if not data:
            return
        buffer += data


def host(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": f"host-{i:05d}", "labels": {"bench": "yes"}},
        "spec": {
            "online": True,
            "bootMACAddress": f"52:54:00:00:{i // 256:02x}:{i % 256:02x}",
            "bmc": {
                "address": f"redfish://10.0.0.{i % 250}/redfish/v1/Systems/1",
                "credentialsName": f"host-{i:05d}-bmc",
            },
        },
    }


def status(marker: str) -> dict[str, Any]:
    return {
        "status": {
            "operationalStatus": "OK",
            "errorCount": 0,
            "provisioningFailCount": 0,
            "errorMessage": marker,
            "poweredOn": True,
            "provisioning": {"state": "available", "ID": marker},
        }
    }


async def run_pool(port: int, token: str, jobs: list[tuple[str, str, Any, str]]) -> float:
    """Run requests on CONNECTIONS connections; returns requests per second."""
    connections = [await Connection.open(port, token) for _ in range(CONNECTIONS)]
    queue: asyncio.Queue[tuple[str, str, Any, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    start = time.perf_counter()

    async def worker(conn: Connection) -> None:
        while not queue.empty():
            method, path, body, ctype = queue.get_nowait()
            code, data = await conn.request(method, path, body, ctype)
            assert code < 300, data[:300]

    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - start
    for conn in connections:
        conn.close()
    return len(jobs) / elapsed


async def scenario(port: int, token: str) -> dict[str, float]:
    setup = await Connection.open(port, token)
    code, _ = await setup.request("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    assert code == 201
    base = f"/apis/metal3.io/v1alpha1/namespaces/{NS}/baremetalhosts"
    health = await run_pool(port, token, [("GET", "/healthz", None, "")] * (HOSTS * 2))
    creates = await run_pool(
        port, token, [("POST", base, host(i), "application/json") for i in range(HOSTS)]
    )
    code, listing = await setup.request("GET", base + "?limit=1")
    rv = orjson.loads(listing)["metadata"]["resourceVersion"]

    sent: dict[str, float] = {}
    latencies: list[float] = []
    expected = HOSTS * WATCHERS
    done = asyncio.Event()

    async def watcher(ready: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {base}?watch=1&resourceVersion={rv} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        ready.set()
        async for line in read_chunked_lines(reader):
            now = time.perf_counter()
            event = orjson.loads(line)
            marker = event["object"].get("status", {}).get("errorMessage", "")
            if marker in sent:
                latencies.append(now - sent[marker])
                if len(latencies) >= expected:
                    done.set()
        writer.close()

    readies = [asyncio.Event() for _ in range(WATCHERS)]
    tasks = [asyncio.create_task(watcher(r)) for r in readies]
    for ready in readies:
        await ready.wait()
    await asyncio.sleep(0.2)  # let the watch requests reach the server

    connections = [await Connection.open(port, token) for _ in range(CONNECTIONS)]
    names = [f"host-{i:05d}" for i in range(HOSTS)]
    start = time.perf_counter()

    async def patcher(conn: Connection, mine: list[str]) -> None:
        for name in mine:
            marker = f"m-{name}"
            sent[marker] = time.perf_counter()
            code, data = await conn.request(
                "PATCH", f"{base}/{name}/status", status(marker), "application/merge-patch+json"
            )
            assert code == 200, data[:300]

    await asyncio.gather(
        *(patcher(conn, names[i::CONNECTIONS]) for i, conn in enumerate(connections))
    )
    patches = HOSTS / (time.perf_counter() - start)
    await asyncio.wait_for(done.wait(), timeout=120)
    for task in tasks:
        task.cancel()
    for conn in connections:
        conn.close()
    setup.close()
    latencies.sort()
    return {
        "healthz_per_s": health,
        "creates_per_s": creates,
        "status_patches_per_s": patches,
        "watch_p50_ms": statistics.median(latencies) * 1000,
        "watch_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "watch_deliveries": float(len(latencies)),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    data = tmp_path_factory.mktemp("bench-apiserver")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metal3",
            "apiserver",
            "--data-dir",
            str(data),
            "--listen",
            "127.0.0.1:0",
            "--crds",
            str(REPO / "crds"),
            "--insecure-http",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    port = 0
    for line in proc.stdout:
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if match:
            port = int(match.group(1))
            break
    assert port, "the API server did not start"
    yield port, (data / "token").read_text().strip()
    proc.terminate()
    proc.wait(timeout=10)
    proc.stdout.close()


def test_bench_apiserver_load(benchmark: Any, server: tuple[int, str]) -> None:
    port, token = server
    figures = benchmark.pedantic(lambda: asyncio.run(scenario(port, token)), rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    figures["creates_vs_healthz"] = figures["creates_per_s"] / figures["healthz_per_s"]
    figures["patches_vs_healthz"] = figures["status_patches_per_s"] / figures["healthz_per_s"]
    print(f"\napiserver with {HOSTS} hosts, {WATCHERS} watchers, {CONNECTIONS} connections:")
    for key, value in figures.items():
        print(f"  {key}: {value:.3f}")
    assert figures["watch_deliveries"] == HOSTS * WATCHERS


class Site:
    """An in-process API server core on its own store, filled with `size` objects: half
    BareMetalHosts, half their BMC Secrets (each owned by its host)."""

    def __init__(self, folder: Path, size: int) -> None:
        folder.mkdir()
        self.store = Store(folder / "state.db")
        self.core = Core(self.store, Registry())
        preload_crds(self.core, REPO / "crds")
        namespaces = self.core.registry.by_key(NAMESPACE_KEY)
        hosts = self.core.registry.by_key("metal3.io/baremetalhosts")
        secrets = self.core.registry.by_key("/secrets")
        assert namespaces is not None and hosts is not None and secrets is not None
        self.hosts, self.secrets = hosts, secrets
        self.core.create(namespaces, "v1", None, {"metadata": {"name": NS}})
        for i in range(size // 2):
            self.owned_host(i)
        assert self.store.count(hosts.key) + self.store.count(secrets.key) == size

    def owned_host(self, i: int) -> str:
        """Creates host i and its BMC Secret, owned by it; returns the host's name."""
        created = self.core.create(self.hosts, "v1alpha1", NS, host(i))
        meta = created["metadata"]
        owner = {
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "name": meta["name"],
            "uid": meta["uid"],
        }
        secret = {
            "metadata": {"name": f"{meta['name']}-bmc", "ownerReferences": [owner]},
            "data": {"username": "YWRtaW4=", "password": "c2VjcmV0"},
        }
        self.core.create(self.secrets, "v1", NS, secret)
        return str(meta["name"])

    def timed_delete(self, i: int) -> float:
        """Seconds to delete a fresh host that owns a Secret; checks the Secret went too."""
        name = self.owned_host(i)
        start = time.perf_counter()
        self.core.delete(self.hosts, NS, name)
        elapsed = time.perf_counter() - start
        assert self.store.get(self.hosts.key, NS, name) is None
        assert self.store.get(self.secrets.key, NS, f"{name}-bmc") is None
        return elapsed

    def close(self) -> None:
        self.store.close()


def delete_scaling(folder: Path) -> dict[str, float]:
    small = Site(folder / "small", SMALL)
    large = Site(folder / "large", LARGE)
    try:
        small_times: list[float] = []
        large_times: list[float] = []
        for round_ in range(DELETE_ROUNDS):
            # Interleaved, each first in turn: drift on the machine hits both stores alike.
            index = 50_000 + round_
            if round_ % 2:
                large_times.append(large.timed_delete(index))
                small_times.append(small.timed_delete(index))
            else:
                small_times.append(small.timed_delete(index))
                large_times.append(large.timed_delete(index))
    finally:
        small.close()
        large.close()
    small_ms = statistics.median(small_times) * 1000
    large_ms = statistics.median(large_times) * 1000
    return {
        "delete_ms_at_100": small_ms,
        "delete_ms_at_10000": large_ms,
        "delete_ratio": large_ms / small_ms,
    }


def test_bench_apiserver_delete_scaling(benchmark: Any, tmp_path: Path) -> None:
    figures = benchmark.pedantic(lambda: delete_scaling(tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(f"\ndelete latency, median of {DELETE_ROUNDS} deletes of a host owning a Secret:")
    for key, value in figures.items():
        print(f"  {key}: {value:.3f}")
    assert figures["delete_ratio"] < 2, figures
