"""The world the direct provisioner's tests run in: real BMC emulators, real disks, a real
image server, and the test playing the hosts.

A `PlayedHost` is what a server would do with its BMC: told of every power and boot change by
the emulators' own notification hooks (sushy-tools' external notifier, our IPMI simulator's
--notify-url), it boots the agent when powered on to boot from the network, or from the
virtual CD holding the agent's ISO: `metal3 agent run` as a process, with the host's boot MAC
and a recorded sysroot whose disks are the test's loop devices (so the agent's inventory,
cleaning and deploy act on them). Powered off, the agent dies; powered on from the disk, the
host "boots its OS" (recorded). Nothing here knows the provisioner's plans: the test sees only
what a BMC and a host would show, and checks it with independent readers (Redfish GETs,
ipmitool).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from baremetalhost.kit import FAST, running_operator, secret
from loopdev import LoopDevice
from metal3.agentapi.server import AgentApiOptions, ensure_tls
from metal3.bmc.emulators import FakeSystem, IPMISimulator, SushyEmulator
from metal3.controllers.baremetalhost import Settings
from metal3.lab.bmcs import poll_redfish_power
from metal3.operator import Operator
from metal3.provisioner.direct.factory import DirectProvisionerFactory
from metal3.provisioner.direct.settings import DirectSettings
from metal3.provisioner.fixture import FixtureWorld

REPO = Path(__file__).resolve().parents[2]
SYSROOT_VM = REPO / "tests" / "agent" / "data" / "sysroot-vm"
MiB = 1 << 20
GiB = 1 << 30
SECTOR = 512
ENV = {**os.environ, "LC_ALL": "C", "BLKID_FILE": "/dev/null"}


def sh(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([str(a) for a in args], capture_output=True, env=ENV, timeout=300)
    if check:
        assert done.returncode == 0, f"{args}: {done.stderr.decode(errors='replace')}"
    return done


# --- the hosts' disks and what the agent reads about them ---------------------------------------


@dataclass(frozen=True)
class Disk:
    device: LoopDevice
    model: str
    serial: str
    rotational: bool


def make_sysroot(dest: Path, boot_mac: str, disks: list[Disk]) -> Path:
    """A recorded tree for `metal3 agent run --root`: this project's test VM (CPU, memory,
    NIC) with the NIC's MAC set to ``boot_mac`` and ``disks`` as the only disks."""
    shutil.copytree(SYSROOT_VM, dest, symlinks=True)
    (dest / "sys/class/net/eth0/address").write_text(boot_mac + "\n")
    devices = []
    for disk in disks:
        kname = disk.device.path.name
        devices.append(
            {
                "kname": kname,
                "model": disk.model,
                "size": disk.device.size,
                "rota": disk.rotational,
                "type": "loop",
                "uuid": None,
                "partuuid": None,
                "serial": disk.serial,
                "wwn": None,
                "vendor": None,
                "hctl": None,
                "tran": None,
                "log-sec": 512,
                "phy-sec": 512,
            }
        )
        loop = dest / "sys/block" / kname / "loop"
        loop.mkdir(parents=True, exist_ok=True)
        (loop / "backing_file").write_text(f"{disk.device.backing}\n")
    (dest / ".tools/lsblk.json").write_text(json.dumps({"blockdevices": devices}))
    return dest


# --- what a BMC shows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostView:
    on: bool
    boot: str  # pxe | cd | disk | other
    media: str | None  # the virtual CD's image URL, when inserted


class BmcView(Protocol):
    def read(self) -> HostView: ...


class RedfishView:
    """A Redfish system read with plain GETs (not the driver under test)."""

    def __init__(self, emulator: SushyEmulator, system: FakeSystem, user: str, password: str):
        self.base = emulator.url + system.path
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def get(self, path: str) -> dict[str, Any]:
        """A resource under the system, e.g. "/VirtualMedia/Cd"."""
        request = urllib.request.Request(self.base + path)
        request.add_header("Authorization", self.auth)
        with urllib.request.urlopen(request, timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body

    def read(self) -> HostView:
        system = self.get("")
        cd = self.get("/VirtualMedia/Cd")
        target = str((system.get("Boot") or {}).get("BootSourceOverrideTarget"))
        boot = {"Pxe": "pxe", "Cd": "cd", "Hdd": "disk"}.get(target, "other")
        media = cd.get("Image") if cd.get("Inserted") else None
        return HostView(system.get("PowerState") == "On", boot, media or None)

    def boot_override(self) -> tuple[str, str]:
        boot = self.get("")["Boot"]
        return str(boot["BootSourceOverrideTarget"]), str(boot["BootSourceOverrideEnabled"])


class IPMIView:
    """An IPMI BMC read with ipmitool (an independent client)."""

    DEVICES: ClassVar[dict[int, str]] = {0x04: "pxe", 0x08: "disk", 0x14: "cd"}

    def __init__(self, sim: IPMISimulator, user: str, password: str) -> None:
        self.base = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(sim.port)]
        self.base += ["-U", user, "-P", password]

    def _raw(self, *args: str) -> list[int]:
        done = subprocess.run(
            [*self.base, "raw", *args], capture_output=True, text=True, timeout=30, check=True
        )
        return [int(b, 16) for b in done.stdout.split()]

    def read(self) -> HostView:
        status = self._raw("0x00", "0x01")  # Get Chassis Status
        boot = self._raw("0x00", "0x09", "0x05", "0x00", "0x00")  # boot flags parameter
        device = self.DEVICES.get(boot[3] & 0b00111100, "other") if boot[2] & 0x80 else "other"
        return HostView(bool(status[0] & 1), device, None)

    def boot_flags(self) -> tuple[str, bool]:
        boot = self._raw("0x00", "0x09", "0x05", "0x00", "0x00")
        return self.DEVICES.get(boot[3] & 0b00111100, "other"), bool(boot[2] & 0x40)


# --- a host --------------------------------------------------------------------------------------


@dataclass
class AgentSetup:
    api_url: str
    ca_file: Path
    iso_url: str | None = None  # the agent ISO a virtual-media boot must find inserted


@dataclass
class PlayedHost:
    """Plays one host (see the module doc); ``boots`` records what each power on booted.

    It acts on the BMC's change notifications (`Notifications`), in order, as a machine acts
    on its power: a BMC that is switched off and on again between two polls is still seen
    to have gone off (a poll would miss it, as the agent it runs would not survive it)."""

    name: str
    view: BmcView
    boot_mac: str
    sysroot: Path
    workdir: Path
    agent: AgentSetup
    start_agents: bool = True  # False: a host whose agent never comes up
    boots: list[str] = field(default_factory=list)  # "agent" | "disk" | "nothing"
    agents_started: int = 0
    _process: subprocess.Popen[bytes] | None = None
    _events: queue.Queue[tuple[bool, str] | None] = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name=f"host-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._events.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._kill_agent()

    def notify(self, on: bool, boot: str) -> None:
        """The BMC says: power ``on`` (or off), boot device ``boot``."""
        self._events.put((on, boot))

    def _loop(self) -> None:
        was_on = False
        while True:
            event = self._events.get()
            if event is None:
                return
            on, boot = event
            if on and not was_on:
                self._power_on(boot)
            elif was_on and not on:
                self._kill_agent()
            was_on = on

    def _power_on(self, boot: str) -> None:
        agent_media = False
        if boot == "cd" and self.agent.iso_url is not None:
            agent_media = self.view.read().media == self.agent.iso_url
        if boot == "pxe" or agent_media:
            self.boots.append("agent")
            if self.start_agents:
                self._start_agent()
        elif boot == "disk":
            self.boots.append("disk")
        else:
            self.boots.append("nothing")

    def _start_agent(self) -> None:
        self._kill_agent()
        self.agents_started += 1
        number = self.agents_started
        state = self.workdir / f"agent-state-{number}"  # a ramdisk starts with nothing
        log = (self.workdir / f"agent-{number}.log").open("wb")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "metal3", "agent", "run", "--api", self.agent.api_url,
             "--ca-file", str(self.agent.ca_file), "--state-dir", str(state),
             "--mac", self.boot_mac, "--root", str(self.sysroot), "--power-action", "exit",
             "--log-level", "DEBUG"],
            stdout=log, stderr=subprocess.STDOUT, env=ENV,
        )  # fmt: skip
        log.close()

    def _kill_agent(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()  # power is gone: no time to shut down
        process.wait(timeout=10)

    def agent_logs(self) -> str:
        return "".join(
            f"--- {p.name}\n{p.read_text(errors='replace')}"
            for p in sorted(self.workdir.glob("agent-*.log"))
        )


REDFISH_BOOT = {"Pxe": "pxe", "Cd": "cd", "Hdd": "disk"}


class Listener(Protocol):
    def notify(self, on: bool, boot: str) -> None: ...


@dataclass
class PowerLog:
    """Listens to a BMC only: every (monotonic time, power on?) it reports."""

    events: list[tuple[float, bool]] = field(default_factory=list)

    def notify(self, on: bool, boot: str) -> None:
        self.events.append((time.monotonic(), on))


class Notifications:
    """Where the emulators report every change: sushy-tools' external notifier PUTs a whole
    system to /redfish, our IPMI simulator POSTs its state to /ipmi/NAME."""

    def __init__(self) -> None:
        self.hosts: dict[str, Listener] = {}
        # (base URL, user, password) of a Redfish emulator whose delayed power changes are
        # followed (`follow_pending_power`); None: they are seen at the next report only.
        self._redfish: tuple[str, str, str] | None = None
        notifications = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                self._receive()

            def do_POST(self) -> None:
                self._receive()

            def _receive(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                notifications.receive(self.path, body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.redfish_url = self.base + "/redfish"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def ipmi_url(self, name: str) -> str:
        return f"{self.base}/ipmi/{name}"

    def follow_pending_power(self, base_url: str, username: str, password: str) -> None:
        """Read a system when its delayed power change is due (the fake driver reports it
        when asked for, with the state still the old one): that read applies the change and
        brings its report, as the lab does. Without it, an off and on again between two
        requests to the emulator goes unseen until the next one."""
        self._redfish = (base_url, username, password)

    def receive(self, path: str, body: dict[str, Any]) -> None:
        if path == "/redfish":
            host = self.hosts.get(str(body.get("name")))
            if host is not None:
                boot = REDFISH_BOOT.get(str(body.get("boot_device") or "Hdd"), "other")
                host.notify(body.get("power_state") == "On", boot)
            pending = body.get("pending_power")
            if self._redfish is not None and isinstance(pending, dict) and "apply_time" in pending:
                base_url, username, password = self._redfish
                delay = max(0.0, float(pending["apply_time"]) - time.time()) + 0.05
                timer = threading.Timer(
                    delay, _read_system, (base_url, str(body.get("uuid")), username, password)
                )
                timer.daemon = True
                timer.start()
        elif path.startswith("/ipmi/"):
            host = self.hosts.get(path.removeprefix("/ipmi/"))
            if host is not None:
                flags = body.get("boot") or {}
                boot = str(flags.get("device")) if flags.get("valid") else "other"
                if body.get("event") == "reset":  # a host that is on goes down and boots again
                    host.notify(False, boot)
                host.notify(body.get("power") == "on", boot)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _read_system(base_url: str, uuid: str, username: str, password: str) -> None:
    with contextlib.suppress(OSError):
        poll_redfish_power(base_url, uuid, username, password)


@contextmanager
def played(notifications: Notifications, hosts: list[PlayedHost]) -> Iterator[list[PlayedHost]]:
    for host in hosts:
        notifications.hosts[host.name] = host
        host.start()
    try:
        yield hosts
    finally:
        for host in hosts:
            host.stop()
            notifications.hosts.pop(host.name, None)


# --- images --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    status: int
    sent: int  # body bytes written before the response ended (or the client went away)


class ImageServer:
    """Files of a folder over HTTP on 127.0.0.1, with Range support; every GET is logged
    with the bytes it sent. ``hold(name, at)`` stops transfers of ``name`` after ``at``
    bytes until ``release()`` (to kill things mid-transfer)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[Request] = []
        self._held: tuple[str, int] | None = None
        self.reached = threading.Event()
        self._release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._get(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def hold(self, name: str, at: int) -> None:
        self._held = (name, at)
        self.reached.clear()
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def complete_gets(self, name: str) -> int:
        """GETs of the whole file that sent all of it."""
        size = (self.root / name).stat().st_size
        return sum(
            1 for r in self.requests if r.path == f"/{name}" and r.status == 200 and r.sent == size
        )

    def _get(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        name = handler.path.lstrip("/")
        path = self.root / name
        rng = handler.headers.get("Range")
        if not path.is_file():
            self.requests.append(Request(handler.path, rng, 404, 0))
            handler.send_error(404)
            return
        size = path.stat().st_size
        start, end, status = 0, size, 200
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            start, end, status = int(first), min(int(last) + 1 if last else size, size), 206
        handler.send_response(status)
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        handler.send_header("Content-Length", str(end - start))
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        sent = 0
        held = self._held
        try:
            with path.open("rb") as f:
                f.seek(start)
                while start + sent < end:
                    if held and held[0] == name and status == 200 and sent >= held[1]:
                        self.reached.set()
                        self._release.wait()
                        held = None
                    block = f.read(min(1 << 20, end - start - sent))
                    handler.wfile.write(block)
                    sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.requests.append(Request(handler.path, rng, status, sent))

    def close(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass(frozen=True)
class Image:
    name: str
    path: Path
    reference: Path  # `qemu-img convert -O raw` of it
    sha256: str  # `sha256sum` of the file


def make_qcow2(root: Path, name: str = "os", *, size_mib: int = 128, random_mib: int = 64) -> Image:
    """A ``size_mib`` MiB GPT disk image, an ext4 root holding real files (``random_mib``
    MiB of them random; with the defaults the qcow2 file is larger than what loopback
    sockets buffer: a GET that sends all of it was read to the end), as qcow2."""
    esp_mib = max(1, min(8, size_mib // 16))
    root_mib = size_mib - esp_mib - 10  # room before, after (the backup GPT) and to spare
    fs_mib = root_mib * 10 // 11  # the file system does not fill its partition
    raw = root / f"{name}.raw"
    with raw.open("wb") as f:
        f.truncate(size_mib * MiB)
    # Partitions aligned to 2048 sectors at both ends, as partitioning tools make them (the
    # lab's disk boot takes any `sgdisk --verify` caution for a problem).
    sh("sgdisk", f"-n1:2048:+{esp_mib}M", "-t1:ef00", f"-n2:0:+{root_mib}M", "-t2:8300",
       "-c2:root", raw)  # fmt: skip
    with raw.open("r+b") as f:
        f.seek(2048 * SECTOR)
        f.write(os.urandom(MiB))
    tree = root / f"{name}-tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text(f'NAME="{name}"\n')
    (tree / "data.bin").write_bytes(os.urandom(random_mib * MiB))
    fs = root / f"{name}.ext4"
    with fs.open("wb") as f:
        f.truncate(fs_mib * MiB)
    sh("mkfs.ext4", "-q", "-F", "-d", tree, fs)
    table = json.loads(sh("sfdisk", "--json", raw).stdout)["partitiontable"]
    start = int(next(p for p in table["partitions"] if p["node"] == f"{raw}2")["start"])
    with raw.open("r+b") as f:
        f.seek(start * SECTOR)
        f.write(fs.read_bytes())
    image = root / f"{name}.qcow2"
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, image)
    reference = root / f"{name}.qcow2.reference"
    sh("qemu-img", "convert", "-O", "raw", image, reference)
    digest = sh("sha256sum", image).stdout.decode().split()[0]
    raw.unlink()
    fs.unlink()
    shutil.rmtree(tree)
    return Image(image.name, image, reference, digest)


def read_at(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)


def wait_until(what: str, check: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# --- the operator ----------------------------------------------------------------------------


@asynccontextmanager
async def direct_operator(
    kubeconfig: Path,
    namespace: str,
    tls_dir: Path,
    settings: DirectSettings,
    *,
    serve_agent_api: bool = True,
    settings_fsm: Settings = FAST,
) -> AsyncIterator[tuple[Operator, AgentSetup, DirectProvisionerFactory]]:
    """An in-process operator with the direct provisioner and (by default) the agent API
    on 127.0.0.1 with TLS made in ``tls_dir``; yields it, what an agent needs to reach it,
    and the provisioner factory."""
    tls = ensure_tls(tls_dir, "127.0.0.1")
    agent_api = (
        AgentApiOptions(
            listen="127.0.0.1:0", cert_file=tls.cert, key_file=tls.key, poll_seconds=5.0
        )
        if serve_agent_api
        else None
    )
    factory = DirectProvisionerFactory(settings)
    async with running_operator(
        kubeconfig,
        FixtureWorld(),
        namespace=namespace,
        settings=settings_fsm,
        provisioners=factory,
        agent_api=agent_api,
        provisioner="direct",
        direct=settings,
    ) as operator:
        setup = AgentSetup(operator.agent_url, tls.ca_cert, settings.media.iso_url)
        yield operator, setup, factory


def bmc_secret(name: str, namespace: str, username: str, password: str) -> dict[str, Any]:
    return secret(name, namespace, username=username, password=password)


def bare_metal_host(
    name: str, namespace: str, address: str, boot_mac: str, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "online": False,
            "bootMACAddress": boot_mac,
            "bmc": {"address": address, "credentialsName": f"{name}-bmc"},
            **spec,
        },
    }
