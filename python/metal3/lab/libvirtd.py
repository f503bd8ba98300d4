"""The lab's own libvirt: `virtlogd` and `libvirtd` started by the lab, inside the lab's
network namespace, with every file they keep under `DIR/libvirt/`.

A privileged libvirtd has fixed paths (`/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`,
`/var/log/libvirt`, `/var/cache/libvirt`), so each daemon starts in a private mount namespace
(`ip netns exec` makes one; `unshare --mount` makes sure) where those paths are bind mounts of
folders in `DIR/libvirt/`: the lab owns its daemons' configuration, sockets, domain
definitions and logs, and the machine's own libvirt files (if any) are never touched. The
daemons run in the lab's network namespace, so the taps libvirt makes for the VMs' NICs are
created there, on the lab bridge; they listen on no network socket, only on the UNIX sockets
in `DIR/libvirt/run/`, which clients in the root namespace (sushy-tools, virtualbmc, virsh)
reach by path: `qemu:///system?socket=DIR/libvirt/run/libvirt-sock`.

QEMU runs as root with no security driver, no cgroups and no per-VM mount namespace (none of
which a container offers), and domains are always `type='qemu'` (TCG): see `metal3.lab.vms`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
# (folder under DIR/libvirt, the path the daemons see it at)
MOUNTS = (
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
)
LIBVIRTD_CONF = """\
# The lab's libvirtd: UNIX sockets only (root-only), no authentication beyond that.
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:stderr"
"""
QEMU_CONF = """\
# The lab's QEMU driver: QEMU runs as root, with no security driver, cgroups or mount
# namespace per VM (a container has none of them to give).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""
VIRTLOGD_CONF = 'log_outputs = "3:stderr"\n'
# Bind-mount each (source, target) pair given as arguments, then run the daemon.
_WRAPPER = (
    'while [ "$1" != -- ]; do mkdir -p "$2"; mount --bind "$1" "$2"; shift 2; done; '
    'shift; exec "$@"'
)


class LibvirtError(RuntimeError):
    """A libvirt daemon did not start, or virsh failed."""


@dataclass(frozen=True)
class LibvirtPaths:
    root: Path  # DIR/libvirt

    def folder(self, name: str) -> Path:
        return self.root / name

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def libvirtd_log(self) -> Path:
        return self.root / "libvirtd.log"

    @property
    def virtlogd_log(self) -> Path:
        return self.root / "virtlogd.log"


def virsh(uri: str, *args: str, timeout: float = 60.0) -> str:
    """`virsh -c URI ARGS`; its output, or LibvirtError with what it said."""
    tool = shutil.which("virsh")
    if tool is None:
        raise LibvirtError("virsh (libvirt-clients) is not installed: `./dev setup` installs it")
    try:
        done = subprocess.run(
            [tool, "-q", "-c", uri, *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise LibvirtError(f"`virsh {' '.join(args)}` took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        said = done.stderr.strip() or done.stdout.strip()
        raise LibvirtError(f"`virsh {' '.join(args)}` failed: {said}")
    return done.stdout


class LabLibvirt:
    """Writes the daemons' configuration, starts them in `namespace`, stops them."""

    def __init__(self, root: Path, namespace: str) -> None:
        self.paths = LibvirtPaths(root)
        self.namespace = namespace
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def uri(self) -> str:
        return self.paths.uri

    def prepare(self) -> None:
        """The folders and configuration files (a fresh set: the lab starts from nothing)."""
        shutil.rmtree(self.paths.root, ignore_errors=True)
        for name, _ in MOUNTS:
            self.paths.folder(name).mkdir(parents=True, mode=0o700)
        if len(str(self.paths.socket)) > SOCKET_PATH_MAX:
            raise LibvirtError(
                f"the lab folder's path is too long for libvirt's socket ({self.paths.socket} "
                f"is over {SOCKET_PATH_MAX} bytes): use a shorter --data-dir"
            )
        etc = self.paths.folder("etc")
        (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "virtlogd.conf").write_text(VIRTLOGD_CONF)

    def _argv(self, daemon: Sequence[str]) -> list[str]:
        binds = [part for name, target in MOUNTS for part in (str(self.paths.folder(name)), target)]
        return [
            "ip", "netns", "exec", self.namespace,
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _WRAPPER, "sh", *binds, "--", *daemon,
        ]  # fmt: skip

    def _spawn(self, name: str, daemon: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                self._argv(daemon),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        self.processes[name] = process
        return process

    def launch(self) -> list[tuple[str, int]]:
        """Start virtlogd then libvirtd (not waiting: `wait_ready`); (what, pid) of each."""
        for tool in ("virtlogd", "libvirtd"):
            if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
                raise LibvirtError(f"{tool} is not installed: `./dev setup` installs libvirt")
        # Their pid files go in the lab's run folder too: the default ones (/run/virtlogd.pid,
        # /run/libvirtd.pid) are locked, so a second lab's daemons would refuse to start.
        self._spawn(
            "virtlogd", ["virtlogd", "--pid-file", "/run/libvirt/virtlogd.pid"],
            self.paths.virtlogd_log,
        )  # fmt: skip
        self._spawn(
            "libvirtd", ["libvirtd", "--pid-file", "/run/libvirt/libvirtd.pid"],
            self.paths.libvirtd_log,
        )  # fmt: skip
        return [(name, p.pid) for name, p in self.processes.items()]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until libvirtd answers on its socket (and virtlogd's socket exists)."""
        deadline = time.monotonic() + timeout
        virtlogd_socket = self.paths.folder("run") / "virtlogd-sock"
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise LibvirtError(
                        f"{name} exited with {process.returncode}: see {self.paths.root}/{name}.log"
                    )
            if self.paths.socket.exists() and virtlogd_socket.exists():
                try:
                    virsh(self.uri, "version", timeout=10)
                    return
                except LibvirtError:
                    pass
            if time.monotonic() > deadline:
                raise LibvirtError(f"libvirtd did not answer within {timeout:.0f} s")
            time.sleep(0.1)

    def define_dir_pool(self, name: str, path: Path) -> None:
        """A started `dir` storage pool (sushy-tools uploads virtual media into one)."""
        path.mkdir(parents=True, exist_ok=True)
        virsh(self.uri, "pool-define-as", name, "dir", "--target", str(path))
        virsh(self.uri, "pool-start", name)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM both daemons (libvirtd first), SIGKILL what is left after `timeout`."""
        for name in ("libvirtd", "virtlogd"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self.processes.clear()
