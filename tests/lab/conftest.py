"""One lab for the lab tests, made and removed by the real command line.

`lab` runs `metal3 lab up --hosts 4 --unregistered 1 --power-delay 0` once for the directory
(host-0 and host-1 Redfish, host-2 redfish-virtualmedia, host-3 IPMI, spare-0 unregistered),
after recording the root namespace's addresses, routes and links; at the end `metal3 lab
down` must leave no namespace, loop device or process of it behind. Each test uses its own
hosts so the tests do not depend on each other's order.

`agent_api` stands where `metal3 standalone --lab` would: an HTTPS server on the lab's
`agent_api.listen` address (127.0.0.1) with the TLS files the lab wrote, recording what the
agents send and answering every lookup 404 (no such host), which keeps each agent looking up.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from lab.helpers import Lab, root_namespace, run_metal3
from metal3.lab.resources import Journal, lab_prefixes, leftovers, process_start_time
from metal3.lab.state import LabInfo, load_lab


@dataclass
class AgentApiStandIn:
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)  # each request's source address
    lock: threading.Lock = field(default_factory=threading.Lock)

    def lookups(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for method, path, body in self.requests if path == "/v1/lookup"]


@contextlib.contextmanager
def agent_api_stand_in(info: LabInfo) -> Iterator[AgentApiStandIn]:
    record = AgentApiStandIn()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            with record.lock:
                record.requests.append(("POST", self.path, body))
                record.clients.append(self.client_address[0])
            answer = b'{"error": "no BareMetalHost has any of these MAC addresses"}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    host, port = info.agent_api_listen.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(info.cert_file, info.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def lab_and_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, AgentApiStandIn]]:
    data_dir = tmp_path_factory.mktemp("lab")
    before = root_namespace()
    up = run_metal3(
        "lab",
        "up",
        "--hosts",
        "4",
        "--unregistered",
        "1",
        "--power-delay",
        "0",
        "--data-dir",
        str(data_dir),
    )
    assert up.returncode == 0, up.stderr + (data_dir / "supervisor.log").read_text()
    journal = Journal(data_dir / "journal.jsonl").entries()
    info = load_lab(data_dir)
    try:
        with agent_api_stand_in(info) as api:
            yield Lab(info, data_dir, before, journal, up.stdout), api
    finally:
        pids = [info.supervisor_pid] + [int(e["pid"]) for e in journal if e["kind"] == "process"]
        for host in info.hosts:  # the agents running now (spare-0's at least)
            state = json.loads((data_dir / "hosts" / host.name / "state.json").read_text())
            pids += [state["agent"]["pid"]] if state["agent"]["pid"] else []
        down = run_metal3("lab", "down", "--data-dir", str(data_dir))
        assert down.returncode == 0, down.stderr
        assert leftovers(data_dir, lab_prefixes(journal)) == []
        assert [pid for pid in pids if process_start_time(pid) is not None] == []
        assert not (data_dir / "lab.json").exists()


@pytest.fixture
def lab(lab_and_api: tuple[Lab, AgentApiStandIn]) -> Lab:
    return lab_and_api[0]


@pytest.fixture
def agent_api(lab_and_api: tuple[Lab, AgentApiStandIn]) -> AgentApiStandIn:
    return lab_and_api[1]


@pytest.fixture(scope="session")
def python_in_namespace() -> Any:
    """Run a Python snippet in a network namespace; its CompletedProcess."""

    def run(namespace: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
