"""The BMCs of the lab's virtual machines, on 127.0.0.1 in the root namespace (where the
operator reaches them, as for process hosts): one sushy-tools Redfish emulator with its
libvirt driver for every Redfish VM (power, boot device and virtual media act on the real
domains), and one `vbmcd` (virtualbmc) serving an IPMI BMC per IPMI VM. Both reach the lab's
libvirtd through its UNIX socket (see `metal3.lab.libvirtd`).

The emulator sees only the Redfish VMs (`SUSHY_EMULATOR_ALLOWED_INSTANCES`); virtual media it
downloads land in `bmc/sushy/tmp/` and are uploaded into the lab's `dir` storage pool, from
which the domain's SATA CD reads them. `vbmcd` gets its own configuration file, folder of
per-VM BMC configs (written directly, `active = True`, so it starts them itself: no password
ever appears on a command line) and control port; its per-VM servers are its child
processes, all in its own process group. Files with passwords are owner-only. It is
virtualbmc's own `vbmcd --foreground`, unmodified: its IPMI server accepts a proposal of
cipher suite 17 (SHA-256) and then answers with SHA-1, which our IPMI driver copes with (see
`metal3.bmc.ipmi`), as it must for real BMCs that do the same.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from metal3.bmc.emulators import free_port, write_htpasswd
from metal3.tls import write_private

LOCALHOST = "127.0.0.1"
MEDIA_POOL = "lab-media"
# The firmware per Redfish boot mode (sushy-tools' map; Debian's OVMF and SeaBIOS packages).
BOOT_LOADERS = {
    "UEFI": {"x86_64": "/usr/share/OVMF/OVMF_CODE.secboot.fd"},
    "Legacy": {"x86_64": "/usr/share/seabios/bios-256k.bin"},
}
_NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class VmBmcError(RuntimeError):
    """A BMC of the VM lab did not come up."""


@dataclass(frozen=True)
class VmBmcPlan:
    name: str  # the domain's name
    kind: str  # redfish | redfish-virtualmedia | ipmi
    system_uuid: str
    username: str
    password: str


def vbmcd_command() -> list[str]:
    """virtualbmc's `vbmcd` in the foreground: the one installed next to this Python first."""
    here = Path(sys.executable).parent
    tool = shutil.which("vbmcd", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")
    if tool is None:
        raise VmBmcError("vbmcd (virtualbmc) is not installed: install metal3's `vms` extra")
    return [tool, "--foreground"]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


class VmBmcs:
    """Starts, addresses and stops the VM lab's Redfish emulator and vbmcd."""

    def __init__(self, folder: Path, plans: Sequence[VmBmcPlan], libvirt_uri: str) -> None:
        self.folder = folder
        self.plans = {plan.name: plan for plan in plans}
        self.libvirt_uri = libvirt_uri
        self.sushy: subprocess.Popen[bytes] | None = None
        self.vbmcd: subprocess.Popen[bytes] | None = None
        self.sushy_port = 0
        self.ipmi_ports: dict[str, int] = {}

    @property
    def redfish(self) -> list[VmBmcPlan]:
        return [p for p in self.plans.values() if p.kind != "ipmi"]

    @property
    def ipmi(self) -> list[VmBmcPlan]:
        return [p for p in self.plans.values() if p.kind == "ipmi"]

    # --- start ---------------------------------------------------------------------------

    def _spawn(
        self, argv: Sequence[str], log: Path, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **_NO_PROXY, **env},
                start_new_session=True,  # its own process group: stopped as one
                cwd=log.parent,
            )

    def launch(self) -> None:
        """Start the emulator (if any Redfish VM) and vbmcd (if any IPMI VM), not waiting."""
        if self.redfish:
            self._launch_sushy()
        if self.ipmi:
            self._launch_vbmcd()

    def _launch_sushy(self) -> None:
        folder = self.folder / "sushy"
        tmp = folder / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        htpasswd = folder / "htpasswd"
        write_htpasswd(htpasswd, {p.username: p.password for p in self.redfish})
        htpasswd.chmod(0o600)
        self.sushy_port = free_port()
        config = folder / "emulator.conf"
        config.write_text(
            "\n".join(
                [
                    f"SUSHY_EMULATOR_LIBVIRT_URI = {self.libvirt_uri!r}",
                    f"SUSHY_EMULATOR_LISTEN_IP = {LOCALHOST!r}",
                    f"SUSHY_EMULATOR_LISTEN_PORT = {self.sushy_port!r}",
                    f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}",
                    f"SUSHY_EMULATOR_STORAGE_POOL = {MEDIA_POOL!r}",
                    "SUSHY_EMULATOR_ALLOWED_INSTANCES = "
                    + repr([p.system_uuid for p in self.redfish]),
                    f"SUSHY_EMULATOR_STATE_DIR = {str(folder / 'state')!r}",
                    "SUSHY_EMULATOR_VMEDIA_VERIFY_SSL = False",
                    # Legacy (BIOS) boot mode needs a loader path too, or the emulator writes
                    # a loader element libvirt refuses: SeaBIOS, what QEMU loads by default.
                    f"SUSHY_EMULATOR_BOOT_LOADER_MAP = {BOOT_LOADERS!r}",
                ]
            )
            + "\n"
        )
        self.sushy = self._spawn(
            [sys.executable, "-m", "sushy_tools.emulator.main", "--config", str(config)],
            folder / "emulator.log",
            {"TMPDIR": str(tmp)},
        )

    def _launch_vbmcd(self) -> None:
        folder = self.folder / "vbmc"
        domains = folder / "domains"
        domains.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.chmod(0o700)
        config = folder / "virtualbmc.conf"
        config.write_text(
            "[default]\n"
            f"config_dir = {domains}\n"
            f"pid_file = {folder / 'vbmcd.pid'}\n"
            f"server_port = {free_port()}\n"
            "[log]\n"
            f"logfile = {folder / 'vbmcd.log'}\n"
        )
        for plan in self.ipmi:
            port = free_port(socket.SOCK_DGRAM)
            self.ipmi_ports[plan.name] = port
            (domains / plan.name).mkdir(mode=0o700)
            write_private(
                domains / plan.name / "config",
                (
                    "[VirtualBMC]\n"
                    f"username = {plan.username}\n"
                    f"password = {plan.password}\n"
                    f"address = {LOCALHOST}\n"
                    f"port = {port}\n"
                    f"domain_name = {plan.name}\n"
                    f"libvirt_uri = {self.libvirt_uri}\n"
                    "active = True\n"
                ).encode(),
            )
        self.vbmcd = self._spawn(
            vbmcd_command(),
            folder / "vbmcd.out",
            {"VIRTUALBMC_CONFIG": str(config)},
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the emulator lists its systems and every vbmc server holds its UDP port."""
        deadline = time.monotonic() + timeout
        while not self._sushy_ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise VmBmcError(f"sushy-emulator (libvirt) not ready after {timeout:.0f} s")
            time.sleep(0.1)
        while not self._ipmi_ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise VmBmcError(f"vbmcd's IPMI servers not listening after {timeout:.0f} s")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        for what, process, log in (
            ("sushy-emulator", self.sushy, self.folder / "sushy" / "emulator.log"),
            ("vbmcd", self.vbmcd, self.folder / "vbmc" / "vbmcd.out"),
        ):
            if process is not None and process.poll() is not None:
                raise VmBmcError(f"{what} exited with {process.returncode}: see {log}")

    def _sushy_ready(self) -> bool:
        if self.sushy is None:
            return True
        plan = self.redfish[0]
        request = urllib.request.Request(f"{self.redfish_url}/redfish/v1/Systems")
        token = base64.b64encode(f"{plan.username}:{plan.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _ipmi_ready(self) -> bool:
        if self.vbmcd is None:
            return True
        wanted = {f"{port:04X}" for port in self.ipmi_ports.values()}
        bound = set()
        for line in Path("/proc/self/net/udp").read_text().splitlines()[1:]:
            local = line.split()[1]
            if local.startswith("0100007F:"):
                bound.add(local.split(":")[1])
        return wanted <= bound

    # --- addresses -----------------------------------------------------------------------

    @property
    def redfish_url(self) -> str:
        return f"http://{LOCALHOST}:{self.sushy_port}" if self.sushy is not None else ""

    def address(self, name: str) -> str:
        plan = self.plans[name]
        if plan.kind == "ipmi":
            return f"ipmi://{LOCALHOST}:{self.ipmi_ports[name]}"
        return f"{plan.kind}+{self.redfish_url}/redfish/v1/Systems/{plan.system_uuid}"

    def processes(self) -> list[tuple[str, int]]:
        """(what, pid) of the emulator, vbmcd and vbmcd's per-VM servers (once ready)."""
        found = []
        if self.sushy is not None:
            found.append(("sushy-emulator (libvirt)", self.sushy.pid))
        if self.vbmcd is not None:
            found.append(("vbmcd", self.vbmcd.pid))
            found += [("vbmc server", pid) for pid in _children(self.vbmcd.pid)]
        return found

    # --- stop ----------------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM each process group, SIGKILL after `timeout`."""
        for process in (self.sushy, self.vbmcd):
            if process is None or process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # children that outlived their parent
        self.sushy = self.vbmcd = None
