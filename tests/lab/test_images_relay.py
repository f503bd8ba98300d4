"""The image server (Range requests, from inside a host's namespace and from 127.0.0.1, every
request logged) and the agent API relay (a host's TCP connection to the gateway reaches a
listener on 127.0.0.1), exercised with curl and sockets inside the lab's namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest

from lab.conftest import AgentApiStandIn
from lab.helpers import Lab

SIZE = 3 * 1024 * 1024 + 17


@pytest.fixture(scope="module")
def payload(lab_and_api: tuple[Lab, AgentApiStandIn]) -> bytes:
    lab = lab_and_api[0]
    data = os.urandom(SIZE)
    (lab.data_dir / "images" / "blob.bin").write_bytes(data)
    return data


def curl_in(namespace: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "curl", "--silent", "--show-error", "--noproxy", "*",
         *args],
        capture_output=True,
        timeout=30,
    )  # fmt: skip


def log_entries(lab: Lab) -> list[dict[str, Any]]:
    lines = (lab.data_dir / "images" / "access.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_hosts_fetch_byte_ranges_from_the_gateway(lab: Lab, payload: bytes) -> None:
    host = lab.info.host("host-1")
    url = lab.info.images_url + "blob.bin"
    whole = curl_in(host.namespace, "--fail", url)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout == payload
    part = curl_in(host.namespace, "--fail", "--range", "1000-1999", url)
    assert part.stdout == payload[1000:2000]
    tail = curl_in(host.namespace, "--fail", "--range", "-100", url)
    assert tail.stdout == payload[-100:]
    head = curl_in(host.namespace, "--head", "--range", "5-9", url)
    headers = head.stdout.decode().lower()
    assert "206 partial content" in headers
    assert f"content-range: bytes 5-9/{SIZE}" in headers
    beyond = curl_in(host.namespace, "--write-out", "%{http_code}", "--range", f"{SIZE}-", url)
    assert beyond.stdout.endswith(b"416")
    missing = curl_in(host.namespace, "--write-out", "%{http_code}", url + "/../../lab.json")
    assert missing.stdout.endswith(b"404")
    entries = [e for e in log_entries(lab) if e["client"].startswith(host.ip + ":")]
    assert [(e["method"], e["range"], e["status"], e["bytes"]) for e in entries][:4] == [
        ("GET", None, 200, SIZE),
        ("GET", "bytes=1000-1999", 206, 1000),
        ("GET", "bytes=-100", 206, 100),
        ("HEAD", "bytes=5-9", 206, 0),
    ]
    assert all(e["listener"] == "lab" for e in entries)


def test_local_listener_serves_the_same_files(lab: Lab, payload: bytes) -> None:
    request = urllib.request.Request(lab.info.images_local_url + "blob.bin")
    request.add_header("Range", "bytes=4096-8191")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        assert response.status == 206
        assert response.read() == payload[4096:8192]
    with pytest.raises(urllib.error.HTTPError) as missing:
        opener.open(lab.info.images_local_url + "nothing-here", timeout=10)
    assert missing.value.code == 404
    local = [e for e in log_entries(lab) if e["listener"] == "local" and e["path"] == "/blob.bin"]
    assert local[-1]["range"] == "bytes=4096-8191"
    assert local[-1]["client"].startswith("127.0.0.1:")


def test_no_host_reaches_beyond_its_subnet(lab: Lab, python_in_namespace: Any) -> None:
    host = lab.info.host("host-0")
    local_port = lab.info.images_local_url.rsplit(":", 1)[1].rstrip("/")
    code = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(2)\n"
        f"print(s.connect_ex(('127.0.0.1', {local_port})))\n"
    )
    done = python_in_namespace(host.namespace, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() != "0"  # the host's own loopback has nothing of the lab


def test_relay_forwards_a_hosts_connection_to_loopback(
    lab: Lab, python_in_namespace: Any, lab_and_api: tuple[Lab, AgentApiStandIn]
) -> None:
    # The session's agent API stand-in (TLS, on 127.0.0.1) is the listener reached.
    host = lab.info.host("host-1")
    gateway, port = lab.info.agent_api_lab_address.rsplit(":", 1)
    code = (
        "import json, socket, ssl\n"
        f"ctx = ssl.create_default_context(cafile={lab.info.ca_file!r})\n"
        f"raw = socket.create_connection(({gateway!r}, {port}), timeout=5)\n"
        f"s = ctx.wrap_socket(raw, server_hostname={gateway!r})\n"
        "body = json.dumps({'mac_addresses': ['02:00:00:00:00:99']}).encode()\n"
        "s.sendall(b'POST /v1/lookup HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: '"
        " + str(len(body)).encode() + b'\\r\\nConnection: close\\r\\n\\r\\n' + body)\n"
        "print(s.recv(100).decode().splitlines()[0])\n"
        "print(s.getpeername()[0])\n"
    )
    done = python_in_namespace(host.namespace, code)
    assert done.returncode == 0, done.stderr
    status_line, peer = done.stdout.splitlines()
    assert status_line == "HTTP/1.1 404 Not Found"  # the stand-in on 127.0.0.1 answered
    assert peer == gateway
    api = lab_and_api[1]
    assert any(b["mac_addresses"] == ["02:00:00:00:00:99"] for b in api.lookups())
    # The host's connection came from a loopback address of its own: 127 and the host's
    # address past its first byte, so the operator sees one client per host.
    with api.lock:
        sources = [c for (_, _, b), c in zip(api.requests, api.clients, strict=True)
                   if b["mac_addresses"] == ["02:00:00:00:00:99"]]  # fmt: skip
    assert sources == ["127." + host.ip.split(".", 1)[1]], (sources, host.ip)


def test_gateway_serves_nothing_else(lab: Lab, python_in_namespace: Any) -> None:
    """Only the image server and the relay listen on the gateway."""
    host = lab.info.host("host-1")
    code = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(2)\n"
        f"print(s.connect_ex(({lab.info.gateway!r}, 1)))\n"
    )
    done = python_in_namespace(host.namespace, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "111"  # ECONNREFUSED
