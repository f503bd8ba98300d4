"""Start real BMC emulators on 127.0.0.1: sushy-tools' Redfish emulator and our IPMI simulator.

Used by the tests, the benchmarks, the lab (`metal3 lab`) and anyone who wants a BMC to point
`metal3 bmc` at. Each emulator runs in its own process with a fresh state directory (on tmpfs
when there is one, or the `workdir` the caller gives) and is ready when the constructor's
context manager returns.

For the lab, both emulators can report every power and boot change at once: sushy-tools' fake
driver PUTs the whole system to `notify_url` (its external notifier), our IPMI simulator POSTs
its state there (`--notify-url`). The fake driver applies a power change 1 to 11 seconds after
the request (and only when the system is next read); `power_delay` fixes that delay instead.

With a `notify_url`, the fake driver is made consistent (`metal3.bmc.sushy_ordered`): as
shipped, concurrent requests on one system can lose a change and report changes out of order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid as uuidlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from metal3.childprocess import die_with_parent
from metal3.tls import TLSFiles, write_private
from metal3.tls import make_tls_files as make_ca_and_server_certificate

LOCALHOST = "127.0.0.1"
_NO_PROXY = "127.0.0.1,localhost"  # emulators' own HTTP requests never go through a proxy


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port nobody listens on right now (TCP or UDP) on 127.0.0.1."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _scratch_dir(prefix: str) -> Path:
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@dataclass(frozen=True, kw_only=True)
class FakeDrive:
    id: str
    name: str
    capacity_bytes: int
    protocol: str = "SATA"


@dataclass(frozen=True, kw_only=True)
class FakeSystem:
    """One system of sushy-tools' fake driver."""

    name: str
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    power_state: str = "Off"
    #: (mac, ip) pairs
    nics: tuple[tuple[str, str], ...] = ()
    drives: tuple[FakeDrive, ...] = ()
    #: the emulator PUTs this system to its notification URL on every change (power, boot)
    external_notifier: bool = False
    #: the boot device at start ("Pxe", "Cd", "Hdd"); None: the fake driver's default (Hdd)
    boot_device: str | None = None

    @property
    def path(self) -> str:
        return f"/redfish/v1/Systems/{self.uuid}"


def fake_systems(count: int, *, prefix: str = "node", drives: int = 1) -> list[FakeSystem]:
    """`count` systems with two NICs each and `drives` drives, deterministic names and MACs."""
    systems = []
    for index in range(count):
        nics = tuple(
            (
                f"52:54:00:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}:{nic:02x}",
                f"10.{nic}.{index >> 8 & 0xFF}.{index & 0xFF}",
            )
            for nic in range(2)
        )
        disk_list = tuple(
            FakeDrive(id=f"drive-{index}-{d}", name=f"Disk {d}", capacity_bytes=(d + 1) * 10**11)
            for d in range(drives)
        )
        systems.append(
            FakeSystem(
                name=f"{prefix}-{index}",
                uuid=str(uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"{prefix}-{index}")),
                nics=nics,
                drives=disk_list,
            )
        )
    return systems


def make_tls_files(directory: Path, host: str = LOCALHOST) -> TLSFiles:
    """A private CA and a server certificate for `host` signed by it (PEM files)."""
    return make_ca_and_server_certificate(
        TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key"),
        [host],
        ca_common_name="metal3 test CA",
        server_common_name=host,
        days=2,
    )


def write_htpasswd(path: Path, users: Mapping[str, str], *, rounds: int = 4) -> None:
    """An htpasswd file with bcrypt hashes (low rounds: every request checks the hash)."""
    import bcrypt

    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()}"
        for user, password in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")


class EmulatorError(RuntimeError):
    """An emulator process did not come up."""


class _Process:
    """A child process with its scratch directory, stopped and cleaned on exit.

    `workdir`: where its files go (the caller's, kept at stop) instead of a new scratch
    directory (removed at stop). `exit_with_parent`: the child is killed when the thread that
    started it ends; start it from a thread that lives as long as the emulator is needed.
    """

    def __init__(
        self, prefix: str, *, workdir: Path | None = None, exit_with_parent: bool = False
    ) -> None:
        self._own_workdir = workdir is None
        if workdir is None:
            workdir = _scratch_dir(prefix)
        else:
            workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.exit_with_parent = exit_with_parent
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "emulator.log"

    def _spawn(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, **env} if env else None,
                preexec_fn=die_with_parent if self.exit_with_parent else None,
            )
        finally:
            log.close()
        return self.process

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _check_alive(self, what: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise EmulatorError(f"{what} exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class SushyEmulator(_Process):
    """sushy-tools' `sushy-emulator` with the fake driver (no libvirt) on a free local port."""

    def __init__(
        self,
        systems: Sequence[FakeSystem],
        *,
        users: Mapping[str, str] | None = None,
        tls: bool = False,
        port: int | None = None,
        disable_power_off: bool = False,
        notify_url: str | None = None,
        power_delay: int | None = None,
        workdir: Path | None = None,
        exit_with_parent: bool = False,
    ) -> None:
        super().__init__("metal3-sushy-", workdir=workdir, exit_with_parent=exit_with_parent)
        #: the emulator refuses ForceOff/GracefulShutdown with 400 (a BMC that says no)
        self.disable_power_off = disable_power_off
        #: where systems with `external_notifier` are PUT on every change
        self.notify_url = notify_url
        if power_delay is not None and power_delay < 0:
            raise ValueError(f"the power delay is a whole number of seconds >= 0: {power_delay}")
        #: seconds until a power change applies (None: the fake driver's random 1 to 11)
        self.power_delay = power_delay
        self.systems = list(systems)
        self.users = dict(users or {})
        self.port = port or free_port()
        self.tls = make_tls_files(self.workdir) if tls else None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOCALHOST}:{self.port}"

    def address(self, system: FakeSystem, scheme: str = "redfish") -> str:
        """A Metal3 BMC address for one system, e.g. `redfish+http://127.0.0.1:8000/...`."""
        transport = "https" if self.tls else "http"
        return f"{scheme}+{transport}://{LOCALHOST}:{self.port}{system.path}"

    def _config(self) -> str:
        state_dir = self.workdir / "state"
        state_dir.mkdir()
        fake = [
            {
                "uuid": s.uuid,
                "name": s.name,
                "power_state": s.power_state,
                "external_notifier": s.external_notifier,
                "nics": [{"mac": mac, "ip": ip} for mac, ip in s.nics],
                **({"boot_device": s.boot_device} if s.boot_device else {}),
            }
            for s in self.systems
        ]
        storage = {
            s.uuid: [
                {
                    "Id": "1",
                    "Name": "Local Storage Controller",
                    "StorageControllers": [
                        {"MemberId": "0", "Name": "Integrated RAID", "SpeedGbps": 12}
                    ],
                    "Drives": [d.id for d in s.drives],
                }
            ]
            for s in self.systems
            if s.drives
        }
        drives = {
            (s.uuid, "1"): [
                {
                    "Id": d.id,
                    "Name": d.name,
                    "CapacityBytes": d.capacity_bytes,
                    "Protocol": d.protocol,
                }
                for d in s.drives
            ]
            for s in self.systems
            if s.drives
        }
        lines = [
            "SUSHY_EMULATOR_FAKE_DRIVER = True",
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fake!r}",
            f"SUSHY_EMULATOR_STATE_DIR = {str(state_dir)!r}",
            f"SUSHY_EMULATOR_STORAGE = {storage!r}",
            f"SUSHY_EMULATOR_DRIVES = {drives!r}",
            f"SUSHY_EMULATOR_LISTEN_IP = {LOCALHOST!r}",
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port!r}",
            "SUSHY_EMULATOR_VMEDIA_VERIFY_SSL = False",
            f"SUSHY_EMULATOR_DISABLE_POWER_OFF = {self.disable_power_off!r}",
        ]
        if self.users:
            htpasswd = self.workdir / "htpasswd"
            write_htpasswd(htpasswd, self.users)
            lines.append(f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}")
        if self.tls is not None:
            lines.append(f"SUSHY_EMULATOR_SSL_CERT = {str(self.tls.cert)!r}")
            lines.append(f"SUSHY_EMULATOR_SSL_KEY = {str(self.tls.key)!r}")
        if self.notify_url is not None:
            lines.append(f"EXTERNAL_NOTIFICATION_URL = {self.notify_url!r}")
            lines.extend(_ordered_fake_driver())
        if self.power_delay is not None:
            lines.extend(_fixed_power_delay(self.power_delay))
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60.0) -> SushyEmulator:
        self.launch()
        self._wait_ready(timeout)
        return self

    def launch(self) -> None:
        """Start the process without waiting for it (`wait_ready` does): several emulators
        then start side by side."""
        config = self.workdir / "emulator.conf"
        config.write_text(self._config())
        media = self.workdir / "vmedia"
        media.mkdir(exist_ok=True)
        self._spawn(
            [sys.executable, "-m", "sushy_tools.emulator.main", "--config", str(config)],
            # Virtual media downloads land in TMPDIR: keep them with the emulator's files.
            # Its own requests (notifications, downloads) go to 127.0.0.1, never via a proxy.
            env={"TMPDIR": str(media), "NO_PROXY": _NO_PROXY, "no_proxy": _NO_PROXY},
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import base64
        import ssl

        request = urllib.request.Request(f"{self.url}/redfish/v1/Systems")
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert)) if self.tls else None
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("sushy-emulator")
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmulatorError(f"sushy-emulator not ready after {timeout}s")
            time.sleep(0.05)

    def __enter__(self) -> SushyEmulator:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _ordered_fake_driver() -> list[str]:
    """Config file lines (the file is Python) that load `metal3.bmc.sushy_ordered` into the
    emulator: its fake driver runs one call at a time and notifies in order, and each request
    costs about a third of the CPU it did as shipped."""
    return ["from metal3.bmc import sushy_ordered as _sushy_ordered", "_sushy_ordered.install()"]


def _fixed_power_delay(seconds: int) -> list[str]:
    """Config file lines (the file is Python) that make the fake driver apply every power
    change `seconds` after the request instead of a random 1 to 11 s: the driver draws the
    delay with `random.randint(1, 11)`, so its module gets a `random` that returns `seconds`.
    As in the driver, the change lands when the system is next read at or after
    `int(now) + seconds`, so up to a second earlier than `seconds` (with 0 and a `notify_url`,
    in the request itself: `metal3.bmc.sushy_ordered`)."""
    return [
        "from sushy_tools.emulator.resources.systems import fakedriver as _fakedriver",
        "class _FixedDelay:",
        "    @staticmethod",
        f"    def randint(low, high): return {seconds!r}",
        "_fakedriver.random = _FixedDelay",
        "del _fakedriver, _FixedDelay",
    ]


class IPMISimulator(_Process):
    """Our pyghmi-based IPMI BMC (`python -m metal3.bmc.ipmisim`) on a free local UDP port."""

    def __init__(
        self,
        *,
        users: Mapping[str, str],
        port: int | None = None,
        ignore_soft_off: bool = False,
        lose_power_requests: Collection[int] = (),
        notify_url: str | None = None,
        workdir: Path | None = None,
        exit_with_parent: bool = False,
    ) -> None:
        super().__init__("metal3-ipmisim-", workdir=workdir, exit_with_parent=exit_with_parent)
        self.ignore_soft_off = ignore_soft_off
        #: numbers (from 1) of the power requests the BMC acknowledges and then loses
        self.lose_power_requests = sorted(lose_power_requests)
        #: where the simulator POSTs its state after every power or boot change
        self.notify_url = notify_url
        if not users:
            raise ValueError("an IPMI simulator needs at least one user")
        self.users = dict(users)
        self.port = port or free_port(socket.SOCK_DGRAM)

    def address(self, scheme: str = "ipmi") -> str:
        return f"{scheme}://{LOCALHOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> IPMISimulator:
        self.launch()
        self.wait_ready(timeout)
        return self

    @property
    def _ready_file(self) -> Path:
        return self.workdir / "ready"

    def launch(self) -> None:
        """Start the process without waiting for it (`wait_ready` does)."""
        users_file = self.workdir / "users"
        # user<TAB>password per line: keeps passwords out of the process list
        write_private(users_file, "".join(f"{u}\t{p}\n" for u, p in self.users.items()).encode())
        ready = self._ready_file
        ready.unlink(missing_ok=True)
        self._spawn(
            [
                sys.executable,
                "-m",
                "metal3.bmc.ipmisim",
                "--address",
                LOCALHOST,
                "--port",
                str(self.port),
                "--users-file",
                str(users_file),
                "--ready-file",
                str(ready),
                "--exit-with-parent",
                *(["--ignore-soft-off"] if self.ignore_soft_off else []),
                *(
                    ["--lose-power-requests", ",".join(map(str, self.lose_power_requests))]
                    if self.lose_power_requests
                    else []
                ),
                *(["--notify-url", self.notify_url] if self.notify_url else []),
            ],
            env={"NO_PROXY": _NO_PROXY, "no_proxy": _NO_PROXY},
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready_file.exists():
            self._check_alive("ipmisim")
            if time.monotonic() > deadline:
                self.stop()
                raise EmulatorError(f"ipmisim not ready after {timeout}s")
            time.sleep(0.02)

    def __enter__(self) -> IPMISimulator:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def silent_tcp_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung BMC web server)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((LOCALHOST, 0))
    server.listen(64)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@contextlib.contextmanager
def silent_udp_port() -> Iterator[int]:
    """A bound UDP port that swallows every datagram (a dead IPMI BMC)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCALHOST, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
