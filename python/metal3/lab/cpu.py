"""The lab hosts' share of the machine's CPU: one cgroup for all their agents, at a low weight.

On real hardware each agent has its host's CPUs to itself; in the lab fifty agents writing
images share two cores with the operator, the API server and the BMC emulators. Scheduled as
equals, the emulated hosts' work delayed every BMC answer and reconcile (the Redfish emulator
took 170 ms at the median to answer a read, and a host's deploy result waited 6 s to become
`provisioned`): a cost of the emulation, not of managing the hosts. The lab therefore puts all
its agents in one cgroup of the CPU controller with an eighth of the default weight
(`HOSTS_WEIGHT`): together they yield to the busy processes beside the group (its siblings
in the hierarchy: on a machine whose processes are all in the root cgroup, as the CI
machine's are, every other process; a control plane in another branch, a container or a
systemd slice, competes through its ancestors' weights instead), and inside the group
the scheduler ranks them by their nice values as usual (the agents' own calls to the operator
at nice 0, their disk work at 19: see `metal3 agent run --work-nice`). The writes still get
every cycle the control plane leaves.

A weight, not `cpu.idle`: marked idle, the group lost the CPU to every wakeup outside it (the
image server's, the network's), and fifty hosts wrote 415 MB/s where they wrote 488 MB/s at
the weight, for the same orchestration overhead (6.7 and 6.4 s at the median).

The group is named as the lab's namespaces are (`m3lab-LABID`), in the hierarchy that has the
CPU controller (cgroup v1's `cpu`, or the v2 unified one: see `group_parent`), journalled
before it is made and removed at teardown. A machine where none can be made (no CPU
controller, a read-only cgroup file system) runs the agents at nice 10 (lower priority)
instead, and `metal3 lab status` says which the lab has.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

HOSTS_WEIGHT = 1 / 8  # the hosts' group's CPU weight, as a fraction of the default


class CpuGroupError(Exception):
    """No CPU group could be made (the message says why)."""


def group_parent(mountinfo: str, proc_cgroup: str) -> Path | None:
    """Where the hosts' group goes, from the texts of /proc/self/mountinfo and
    /proc/self/cgroup: inside this process's cgroup of the v1 `cpu` hierarchy, or beside it in
    the v2 unified one (v2 keeps processes out of a cgroup whose children use its controllers)
    if its parent hands the CPU controller down; None when neither is there."""
    own: dict[str, str] = {}  # controller list ("" for v2) -> this process's cgroup path
    for line in proc_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number:
            own[controllers] = path
    v1_path = next((p for c, p in own.items() if "cpu" in c.split(",")), None)
    v2_parent: Path | None = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if len(fields) < 5 or len(after) < 3:
            continue
        root, mount_point = fields[3], Path(fields[4])
        fstype, options = after[0], after[2].split(",")
        if fstype == "cgroup" and "cpu" in options and v1_path is not None:
            return mount_point / _below(v1_path, root)
        if fstype == "cgroup2" and "" in own:
            below = _below(own[""], root)
            v2_parent = mount_point / below
            if below:
                v2_parent = v2_parent.parent
    if v2_parent is not None:
        with contextlib.suppress(OSError):
            if "cpu" in (v2_parent / "cgroup.subtree_control").read_text().split():
                return v2_parent
    return None


def _below(path: str, root: str) -> str:
    """`path` (a cgroup path) relative to the mount's `root`, as a relative path."""
    if root != "/" and path.startswith(root):
        path = path[len(root) :]
    return path.lstrip("/")


def _parent() -> Path:
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        raise CpuGroupError(f"cannot read this process's cgroups: {exc}") from exc
    parent = group_parent(mountinfo, proc_cgroup)
    if parent is None:
        raise CpuGroupError("no cgroup hierarchy with the CPU controller is available")
    return parent


def group_path(name: str) -> Path:
    """Where the group `name` goes (made by `create_group`); CpuGroupError if nowhere."""
    return _parent() / name


def groups_named(names: list[str]) -> list[Path]:
    """The groups of these names that exist (what a teardown left)."""
    try:
        parent = _parent()
    except CpuGroupError:
        return []
    return [parent / name for name in names if (parent / name).is_dir()]


def create_group(group: Path) -> Path:
    """Make the hosts' CPU group at `group` (from `group_path`) with `HOSTS_WEIGHT`; raises
    CpuGroupError saying why it could not."""
    try:
        group.mkdir(exist_ok=True)
    except OSError as exc:
        raise CpuGroupError(f"cannot make {group}: {exc.strerror}") from exc
    name, value = weight_file(group)
    try:
        (group / name).write_text(value)
    except OSError as exc:
        remove_group(group)
        raise CpuGroupError(f"cannot set {group / name}: {exc.strerror}") from exc
    return group


def weight_file(group: Path) -> tuple[str, str]:
    """The group's weight file and `HOSTS_WEIGHT` in its scale: cgroup v1's `cpu.shares`
    (default 1024), v2's `cpu.weight` (default 100)."""
    if (group / "cpu.shares").exists():
        return "cpu.shares", str(round(1024 * HOSTS_WEIGHT))
    return "cpu.weight", str(round(100 * HOSTS_WEIGHT))


def procs_file(group: Path) -> bytes:
    """The file `join` writes to, as bytes (made before the fork)."""
    return os.fsencode(group / "cgroup.procs")


def join(procs: bytes) -> None:
    """Move this process into the group whose `procs_file` this is. Only system calls:
    callable between fork and exec. Best effort: the parent checks with `members`."""
    try:
        fd = os.open(procs, os.O_WRONLY)
    except OSError:
        return
    try:
        os.write(fd, b"%d" % os.getpid())
    except OSError:
        pass
    finally:
        os.close(fd)


def members(group: Path) -> list[int]:
    try:
        return [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def remove_group(group: Path, timeout: float = 5.0) -> bool:
    """Remove the group once its processes are gone (a killed one leaves it a moment after
    its signal); False if it still has members after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            group.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
        time.sleep(0.02)
