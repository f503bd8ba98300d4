"""Block-device facts the agent needs before it touches a disk, and the one way it runs tools.

The kernel's view comes from sysfs (`/sys/dev/block/MAJ:MIN`, partitions, `holders`, `slaves`)
and procfs (`/proc/self/mountinfo`, `/proc/swaps`); devices are matched by their device
numbers, not by names, so symlinks and renamed nodes cannot hide a use. The functions that
read those trees take `sysfs`/`proc` roots so tests can feed a recorded tree for what this
machine cannot show (md and device-mapper holders).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path

from metal3.agent.errors import AgentError

log = logging.getLogger(__name__)

SYSFS = Path("/sys")
PROCFS = Path("/proc")
SECTOR = 512  # sysfs counts sizes and offsets in 512-byte sectors, whatever the disk's own

# Where the tools come from, for the "not installed" message.
_PACKAGES = {
    "wipefs": "util-linux",
    "partx": "util-linux",
    "blkid": "util-linux",
    "lsblk": "util-linux",
    "sgdisk": "gdisk",
    "mdadm": "mdadm",
}
# A ramdisk's PATH may lack the sbin directories where these tools live.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class ToolError(AgentError):
    """An external tool is missing, failed or hung; the message names it and says why."""

    def __init__(self, tool: str, message: str, *, returncode: int | None = None) -> None:
        super().__init__(message)
        self.tool = tool
        self.returncode = returncode


class NotADiskError(AgentError):
    """The path names no block device, or a partition where a whole disk is needed."""


class DiskAccessError(AgentError):
    """The disk cannot be opened, read or written (an I/O or permission error)."""


class DiskInUseError(AgentError):
    """The disk is mounted, swapped on, held by md/LVM or holds the running system."""

    def __init__(self, device: str, reasons: Sequence[str]) -> None:
        super().__init__(f"refusing to touch {device}: " + "; ".join(reasons))
        self.device = device
        self.reasons = list(reasons)


def run_tool(
    argv: Sequence[str],
    *,
    ok_codes: Container[int] = (0,),
    timeout: float = 600.0,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` and return its output (text); any failure is a `ToolError`.

    The tool runs in the C locale (output in the words the callers parse), with libblkid's
    cache off (`BLKID_FILE=/dev/null`: a reused loop device must not look like its last
    user's), and is also looked for in the sbin directories. `ok_codes` lists the exit codes
    that are not failures (`blkid` exits 2 for "nothing found"). The message of a failure
    names the tool, the command and the tool's own words.
    """
    tool = argv[0]
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_EXTRA_PATH])
    exe = shutil.which(tool, path=search)
    if exe is None:
        package = _PACKAGES.get(tool)
        from_package = f" (package {package})" if package else ""
        raise ToolError(tool, f"{tool}{from_package} is not installed: cannot run `{_cmd(argv)}`")
    env = {**os.environ, "LC_ALL": "C", "BLKID_FILE": "/dev/null"}
    log.debug("running %s", _cmd(argv))
    try:
        done = subprocess.run(
            [exe, *argv[1:]],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(tool, f"`{_cmd(argv)}` did not finish within {timeout:g} s") from exc
    except OSError as exc:
        raise ToolError(tool, f"cannot run `{_cmd(argv)}`: {exc}") from exc
    if done.returncode not in ok_codes:
        said = (done.stderr.strip() or done.stdout.strip())[-2000:]
        raise ToolError(
            tool,
            f"`{_cmd(argv)}` failed (exit {done.returncode}): {said or 'no output'}",
            returncode=done.returncode,
        )
    return done


def _cmd(argv: Sequence[str]) -> str:
    return " ".join(argv)


@dataclass(frozen=True)
class BlockDevice:
    """A block device as the kernel knows it: its node, kernel name, sysfs directory, number."""

    path: str
    name: str
    sysfs: Path
    devno: tuple[int, int]


@dataclass(frozen=True)
class Partition(BlockDevice):
    """A partition the kernel has a node for; `start` and `sectors` in 512-byte units."""

    number: int
    start: int
    sectors: int


def find_disk(device: str, *, sysfs: Path = SYSFS) -> BlockDevice:
    """The whole disk at `device` (symlinks such as /dev/disk/by-path/... are followed).

    Raises `NotADiskError` when the path is missing, is not a block device, or is a partition.
    """
    real = os.path.realpath(device)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise NotADiskError(f"{device}: no such device ({exc.strerror})") from exc
    if not stat.S_ISBLK(st.st_mode):
        raise NotADiskError(f"{device} is not a block device")
    devno = (os.major(st.st_rdev), os.minor(st.st_rdev))
    node = sysfs / "dev" / "block" / f"{devno[0]}:{devno[1]}"
    if not node.exists():
        raise NotADiskError(f"{device}: the kernel lists no block device {devno[0]}:{devno[1]}")
    directory = node.resolve()
    if (directory / "partition").exists():
        parent = _device_path(directory.parent)
        raise NotADiskError(f"{device} is a partition of {parent}, not a whole disk")
    return BlockDevice(path=real, name=directory.name, sysfs=directory, devno=devno)


def size_bytes(device: BlockDevice) -> int:
    """The device's size in bytes, as the kernel reports it."""
    return int((device.sysfs / "size").read_text()) * SECTOR


def partitions(disk: BlockDevice) -> list[Partition]:
    """The partitions the kernel has nodes for on `disk`, by partition number.

    This is the kernel's view; a table written since is seen only after `partx -u`.
    """
    found = []
    for entry in disk.sysfs.iterdir():
        number_file = entry / "partition"
        if not number_file.is_file():
            continue
        found.append(
            Partition(
                path=_device_path(entry),
                name=entry.name,
                sysfs=entry,
                devno=_devno(entry),
                number=int(number_file.read_text()),
                start=int((entry / "start").read_text()),
                sectors=int((entry / "size").read_text()),
            )
        )
    return sorted(found, key=lambda p: p.number)


def holders(device: BlockDevice) -> list[str]:
    """Kernel names of the devices built on `device` (md arrays, device-mapper targets)."""
    directory = device.sysfs / "holders"
    if not directory.is_dir():
        return []
    return sorted(entry.name for entry in directory.iterdir())


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo: what is mounted where."""

    devno: tuple[int, int]
    mountpoint: str
    source: str
    fstype: str


def mounts(*, proc: Path = PROCFS) -> list[Mount]:
    """The mounts of this process's mount namespace, from `/proc/self/mountinfo`."""
    found = []
    for line in (proc / "self" / "mountinfo").read_text().splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        major, minor = fields[2].split(":")
        found.append(
            Mount(
                devno=(int(major), int(minor)),
                mountpoint=_unescape(fields[4]),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
            )
        )
    return found


def swaps(*, proc: Path = PROCFS) -> list[str]:
    """The active swap areas (device nodes or files), from `/proc/swaps`."""
    lines = (proc / "swaps").read_text().splitlines()
    return [_unescape(line.split()[0]) for line in lines[1:] if line.strip()]


def usage_reasons(disk: BlockDevice, *, sysfs: Path = SYSFS, proc: Path = PROCFS) -> list[str]:
    """Why `disk` must not be touched: each reason names the device and its use.

    Empty when nothing uses it. Looks at the disk and each partition the kernel knows:
    mounts (by device number, and by source node for file systems such as btrfs that report
    an anonymous number), active swap, holders (md arrays, LVM/device-mapper), and whether
    the file system at `/` lives on it, directly or through md/device-mapper layers.
    """
    members: list[BlockDevice] = [disk, *partitions(disk)]
    by_devno = {m.devno: m for m in members}
    by_path = {m.path: m for m in members}

    def member_for(devno: tuple[int, int] | None, path: str) -> BlockDevice | None:
        if devno is not None and devno in by_devno:
            return by_devno[devno]
        return by_path.get(path)

    reasons: list[str] = []
    for mount in mounts(proc=proc):
        member = member_for(mount.devno, "") or member_for(_node_devno(mount.source), "")
        if member is not None:
            reasons.append(f"{member.path} is mounted at {mount.mountpoint}")
    for area in swaps(proc=proc):
        member = member_for(_node_devno(area), area)
        if member is not None:
            reasons.append(f"{member.path} is in use as swap")
    for member in members:
        reasons.extend(f"{member.path} is held by /dev/{h}" for h in holders(member))
    root_disks = running_system_disks(sysfs=sysfs, proc=proc)
    if disk.sysfs.resolve() in root_disks:
        reasons.append(f"{disk.path} holds the running system (the file system at /)")
    return list(dict.fromkeys(reasons))


def running_system_disks(*, sysfs: Path = SYSFS, proc: Path = PROCFS) -> set[Path]:
    """The sysfs directories of the disks under `/`, following md/device-mapper `slaves`.

    Empty when `/` is on no block device (a ramdisk's tmpfs or overlay).
    """
    disks: set[Path] = set()
    seen: set[Path] = set()
    todo = []
    for mount in mounts(proc=proc):
        if mount.mountpoint != "/":
            continue
        for devno in (mount.devno, _node_devno(mount.source)):
            if devno is None:
                continue
            node = sysfs / "dev" / "block" / f"{devno[0]}:{devno[1]}"
            if node.exists():
                todo.append(node.resolve())
    while todo:
        directory = todo.pop()
        if directory in seen:
            continue
        seen.add(directory)
        slaves = directory / "slaves"
        below = sorted(slaves.iterdir()) if slaves.is_dir() else []
        if below:
            todo.extend(entry.resolve() for entry in below)
        elif (directory / "partition").exists():
            disks.add(directory.parent)
        else:
            disks.add(directory)
    return disks


def ensure_not_in_use(disk: BlockDevice) -> None:
    """Raise `DiskInUseError` if `disk` is in use (see `usage_reasons`).

    As a last check the disk is opened exclusively (O_EXCL), which the kernel refuses while
    anything has claimed the disk or one of its partitions: a mount, swap or holder that the
    tables above missed.
    """
    reasons = usage_reasons(disk)
    if reasons:
        raise DiskInUseError(disk.path, reasons)
    try:
        fd = os.open(disk.path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise DiskInUseError(
                disk.path, ["the kernel reports it busy (an exclusive open failed: EBUSY)"]
            ) from exc
        raise DiskAccessError(f"cannot open {disk.path} exclusively: {exc.strerror}") from exc
    os.close(fd)


def _devno(directory: Path) -> tuple[int, int]:
    major, minor = (directory / "dev").read_text().strip().split(":")
    return int(major), int(minor)


def _node_devno(path: str) -> tuple[int, int] | None:
    """The device number of a block-device node, None for anything else (or nothing)."""
    if not path.startswith("/"):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def _device_path(directory: Path) -> str:
    """The /dev node of a sysfs block directory (DEVNAME from its uevent, else its name)."""
    try:
        for line in (directory / "uevent").read_text().splitlines():
            if line.startswith("DEVNAME="):
                return "/dev/" + line.removeprefix("DEVNAME=")
    except OSError:
        pass
    return "/dev/" + directory.name.replace("!", "/")


def _unescape(field: str) -> str:
    """Undo the octal escapes (\\040 for a space) of /proc/self/mountinfo and /proc/swaps."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        chunk = field[i : i + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and chunk[1:].isdigit():
            out.append(chr(int(chunk[1:], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
