"""Helpers for the provisioner's tests on `metal3 lab`: the lab and `metal3 standalone --lab`
as processes, the lab's manifests, its image server's access log, and checks of a host's disk
with reference tools (`qemu-img convert` bytes, `blkid`, `bsdtar`)."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from baremetalhost.kit import running_operator
from metal3.agentapi.server import AgentApiOptions
from metal3.controllers.baremetalhost import Settings
from metal3.operator import Operator
from metal3.provisioner.direct.factory import DirectProvisionerFactory
from metal3.provisioner.direct.lab import LabConfig
from metal3.provisioner.direct.settings import DirectSettings
from metal3.provisioner.fixture import FixtureWorld
from provisioner.harness import ENV, SECTOR, read_at, sh

GPT_HEAD = 34 * SECTOR  # MBR + primary GPT: the agent rewrites them (config drive partition)


def metal3(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", *args],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


@dataclass(frozen=True)
class LabRun:
    """A lab made by `metal3 lab up`: its folder and `lab.json`."""

    dir: Path
    doc: dict[str, Any]

    @property
    def hosts(self) -> dict[str, dict[str, Any]]:
        return {h["name"]: h for h in self.doc["hosts"] if h["registered"]}

    @property
    def images(self) -> Path:
        return self.dir / "images"

    def image_url(self, name: str) -> str:
        """The URL the lab's hosts fetch `DIR/images/NAME` at (from `DIR/images/URL`)."""
        return (self.images / "URL").read_text().strip().rstrip("/") + "/" + name

    def state(self, host: str, name: str = "state.json") -> dict[str, Any]:
        return dict(json.loads((self.dir / "hosts" / host / name).read_text()))

    def os_boot(self, host: str) -> dict[str, Any] | None:
        """What the host's last disk boot found (`os.json`), None before any."""
        path = self.dir / "hosts" / host / "os.json"
        return dict(json.loads(path.read_text())) if path.exists() else None

    def agent_log(self, host: str) -> str:
        path = self.dir / "hosts" / host / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> list[dict[str, Any]]:
        path = self.images / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def host_by_ip(self) -> dict[str, str]:
        return {h["ip"]: h["name"] for h in self.doc["hosts"]}

    def manifests(self, namespace: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Each registered host's documents from `DIR/manifests/NAME.yaml`; moved to
        ``namespace`` when given (without the Namespace document `lab up` may have added)."""
        found = {}
        for name in self.hosts:
            text = (self.dir / "manifests" / f"{name}.yaml").read_text()
            documents = [d for d in yaml.safe_load_all(text) if d]
            if namespace is not None:
                documents = [d for d in documents if d["kind"] != "Namespace"]
                for document in documents:
                    document["metadata"]["namespace"] = namespace
            found[name] = documents
        return found


@contextmanager
def lab_up(data_dir: Path, *args: str) -> Iterator[LabRun]:
    """`metal3 lab up --data-dir DIR ARGS...` until the block ends, then `metal3 lab down`."""
    try:
        up = metal3("lab", "up", "--data-dir", str(data_dir), *args)
        supervisor_log = data_dir / "supervisor.log"
        assert up.returncode == 0, up.stderr + (
            supervisor_log.read_text() if supervisor_log.exists() else ""
        )
        yield LabRun(data_dir, json.loads((data_dir / "lab.json").read_text()))
    finally:
        down = metal3("lab", "down", "--data-dir", str(data_dir))
        assert down.returncode == 0, down.stderr


# --- the image server's access log ---------------------------------------------------------


def whole_gets(entries: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """GETs of ``path`` that asked for the whole file (no Range header), whatever came of them:
    each is one start of a write (the agent streams the image to the disk as it reads it)."""
    return [e for e in entries if e["method"] == "GET" and e["path"] == path and not e["range"]]


def client_ip(entry: dict[str, Any]) -> str:
    return str(entry["client"]).rpartition(":")[0]


# --- a host's disk, read with reference tools ------------------------------------------------


def image_on_disk(disk: Path, reference: Path) -> bool:
    """The disk holds the image's bytes (`qemu-img convert -O raw` of it), its first 34 sectors
    (MBR, primary GPT: rewritten to add the config drive) aside."""
    expected = reference.read_bytes()
    return read_at(disk, 0, len(expected))[GPT_HEAD:] == expected[GPT_HEAD:]


def partition_table_type(disk: Path) -> str:
    """What `blkid -p` finds as the disk's partition table ("" for none)."""
    done = sh("blkid", "-p", "-s", "PTTYPE", "-o", "value", disk, check=False)
    return done.stdout.decode().strip()


@dataclass(frozen=True)
class ConfigDrive:
    label: str  # the file system's, as blkid reads it
    fs_type: str
    meta_data: dict[str, Any] = field(default_factory=dict)
    user_data: bytes = b""


def read_config_drive(disk: Path, scratch: Path) -> ConfigDrive:
    """The disk's last partition (where the agent puts the config drive), read with `sfdisk`,
    `blkid` and `bsdtar` from a copy in ``scratch`` of as much of it as the ISO 9660 volume
    there says it spans (its primary volume descriptor's volume size; all of the partition
    when there is none)."""
    table = json.loads(sh("sfdisk", "--json", disk).stdout)["partitiontable"]
    last = max(table["partitions"], key=lambda p: int(p["start"]))
    sector = int(table.get("sectorsize", SECTOR))
    start, size = int(last["start"]) * sector, int(last["size"]) * sector
    descriptor = read_at(disk, start + 16 * 2048, 2048)
    if descriptor[:6] == b"\x01CD001":
        blocks = int.from_bytes(descriptor[80:84], "little")
        block_size = int.from_bytes(descriptor[128:130], "little")
        size = min(size, blocks * block_size)
    copy = scratch / f"{disk.name}-config-drive.iso"
    copy.write_bytes(read_at(disk, start, size))
    try:
        probe = sh("blkid", "-p", "-o", "export", copy, check=False).stdout.decode()
        tags = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
        meta = sh("bsdtar", "-xOf", copy, "openstack/latest/meta_data.json").stdout
        user = sh("bsdtar", "-xOf", copy, "openstack/latest/user_data", check=False).stdout
    finally:
        copy.unlink()
    return ConfigDrive(tags.get("LABEL", ""), tags.get("TYPE", ""), json.loads(meta), user)


def user_data_secret(name: str, namespace: str, user_data: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"userData": base64.b64encode(user_data).decode()},
    }


# --- `metal3 standalone --lab DIR` as a process ------------------------------------------------


class StandaloneProcess:
    """`metal3 standalone --lab DIR` as a user runs it, on a fixed API server port so that a
    restart on the same data directory serves the same kubeconfig; one log file per start."""

    def __init__(self, data_dir: Path, lab_dir: Path, port: int, *extra: str) -> None:
        self.data_dir = data_dir
        self.argv = [
            sys.executable, "-m", "metal3", "standalone", "--data-dir", str(data_dir),
            "--listen", f"127.0.0.1:{port}", "--health-addr", "127.0.0.1:0",
            "--grace-period", "5", "--lab", str(lab_dir), *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kubeconfig = data_dir / "kubeconfig"

    def log(self, start: int) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-{start}.log"

    def logs(self) -> str:
        return "".join(
            f"===== start {n}\n{self.log(n).read_text(errors='replace')}"
            for n in range(1, self.starts + 1)
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until it serves (it prints the kubeconfig's path)."""
        self.starts += 1
        log = self.log(self.starts)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + timeout
        while not re.search(r"^kubeconfig: (\S+)$", log.read_text(errors="replace"), re.M):
            assert self.proc.poll() is None, log.read_text(errors="replace")[-5000:]
            assert time.monotonic() < deadline, "standalone did not start:\n" + log.read_text()
            time.sleep(0.05)

    def children(self) -> list[int]:
        """The process ids of its children (IPMI workers, ...)."""
        assert self.proc is not None
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_agent(lab: LabRun, host: str) -> int:
    """SIGKILL the agent the lab runs for ``host`` (its pid from `state.json`); the pid."""
    pid = lab.state(host)["agent"]["pid"]
    assert isinstance(pid, int) and pid > 0, lab.state(host)
    os.kill(pid, signal.SIGKILL)
    return pid


# --- a gate in front of the lab's image server ---------------------------------------------------


@dataclass(frozen=True)
class GateRequest:
    client: str  # the host's IP
    path: str
    range: str | None
    status: int
    sent: int  # body bytes the gate sent before the response ended or the client went away
    at: float  # monotonic, when the response ended


class ImageGate:
    """An HTTP proxy the test runs in the lab's namespace (on the lab's gateway address, so
    every lab host reaches it) in front of the lab's image server: each GET is passed on to
    the lab's server with its Range header and the answer streamed back, and logged with the
    bytes sent. ``hold(path, at)``: the first whole-file GET of ``path`` to reach ``at``
    bytes stops there (``reached`` is set) until ``release()``, so a test can act while a
    host is in the middle of a transfer."""

    CHUNK = 64 << 10

    def __init__(self, lab: LabRun) -> None:
        from metal3.lab.network import listening_socket

        network = lab.doc["network"]
        sock = listening_socket(network["gateway"], 0, namespace=network["namespace"])
        self.base = f"http://{network['gateway']}:{sock.getsockname()[1]}"
        self.upstream = str(lab.doc["images"]["local_url"]).rstrip("/")
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.requests: list[GateRequest] = []
        self.reached = threading.Event()
        self.held_client = ""
        self._hold: tuple[str, int] | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                gate._get(self)

        self.httpd = http.server.ThreadingHTTPServer(
            sock.getsockname(), Handler, bind_and_activate=False
        )
        self.httpd.socket.close()
        self.httpd.socket = sock
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def hold(self, path: str, at: int) -> None:
        self._hold = (path, at)
        self.reached.clear()
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def _take_hold(self, path: str, ranged: bool) -> int | None:
        """The byte to stop at, for the first whole-file GET of the held path."""
        with self._lock:
            hold, self._hold = self._hold, None
            if hold is None or ranged or hold[0] != path:
                self._hold = hold
                return None
            return hold[1]

    def _get(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        client = handler.client_address[0]
        rng = handler.headers.get("Range")
        request = urllib.request.Request(self.upstream + handler.path)
        if rng:
            request.add_header("Range", rng)
        status, sent = 502, 0
        stop: int | None = None
        try:
            try:
                response = self._opener.open(request, timeout=30)
            except urllib.error.HTTPError as exc:
                status = exc.code
                exc.close()
                handler.send_response(status)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            with response:
                status = response.status
                handler.send_response(status)
                for header in ("Content-Length", "Content-Range", "Accept-Ranges"):
                    if response.headers.get(header):
                        handler.send_header(header, response.headers[header])
                handler.end_headers()
                stop = self._take_hold(handler.path, bool(rng)) if status == 200 else None
                while True:
                    if stop is not None and sent >= stop:
                        self.held_client = client
                        self.reached.set()
                        self._release.wait(timeout=300)
                        stop = None
                    want = self.CHUNK if stop is None else min(self.CHUNK, stop - sent)
                    block = response.read(want)
                    if not block:
                        break
                    handler.wfile.write(block)
                    handler.wfile.flush()
                    sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            if stop is not None:  # the client left before the hold (a probe): keep it
                with self._lock:
                    self._hold = self._hold or (handler.path, stop)
            self.requests.append(
                GateRequest(client, handler.path, rng, status, sent, time.monotonic())
            )

    def close(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# --- an in-process operator driving the lab ------------------------------------------------------


@asynccontextmanager
async def lab_operator(
    kubeconfig: Path, namespace: str, lab: LabRun, direct: DirectSettings, fsm: Settings
) -> AsyncIterator[Operator]:
    """The operator in this process, wired to the lab as `--lab DIR` wires it (the agent
    API where lab.json says, with the lab's TLS files; the lab's agent boot media), with the
    direct provisioner's and the state machine's settings given (short timeouts, backoff)."""
    config = LabConfig.load(lab.dir)
    settings = replace(direct, media=config.boot_media)
    agent_api = AgentApiOptions(
        listen=config.agent_listen,
        cert_file=config.cert_file,
        key_file=config.key_file,
        ca_file=config.ca_file,
        poll_seconds=5.0,
    )
    async with running_operator(
        kubeconfig,
        FixtureWorld(),
        namespace=namespace,
        settings=fsm,
        provisioners=DirectProvisionerFactory(settings),
        agent_api=agent_api,
        provisioner="direct",
        direct=settings,
    ) as operator:
        yield operator
