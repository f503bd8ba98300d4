"""The hosts' disks: sparse files, each attached to a loop device.

The loop device is the disk the host's agent cleans and writes (a real block device, so the
agent takes the same paths as on a server). Loop devices are found again by their backing
file (`losetup --list`), so `lab down` detaches every one a lab made even when the
supervisor that attached them was killed.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


class DiskError(RuntimeError):
    """A disk file or loop device could not be made or removed."""


def _losetup(*args: str) -> str:
    tool = shutil.which("losetup")
    if tool is None:
        raise DiskError("losetup (util-linux) is not installed: the lab's disks need it")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise DiskError(f"`losetup {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def make_sparse(path: Path, size: int) -> None:
    """A new file of `size` bytes that reads as zeros and takes no space until written."""
    with path.open("wb") as handle:
        handle.truncate(size)


def attach(backing: Path) -> str:
    """Attach `backing` to a free loop device; its path (/dev/loopN).

    The device reads and writes its file with direct I/O where the file system allows it, so
    that it behaves like a disk: what is written goes to storage, not into the machine's page
    cache first. Through the page cache, what the hosts write together (gigabytes, for a
    fleet) is copied twice and flushed by the kernel's writeback under its dirty-page limits,
    and a short write looks faster than the storage is.
    """
    try:
        device = _losetup("--find", "--show", str(backing)).strip()
    except DiskError as exc:
        raise DiskError(
            f"{exc}. The lab's disks need root, the loop driver and /dev/loop-control"
        ) from None
    try:
        _losetup("--direct-io=on", device)
    except DiskError as exc:  # a file system without O_DIRECT: the page cache it is
        log.info("%s stays on the page cache: %s", device, exc)
    return device


def loop_devices_over(backing_files: Iterable[Path]) -> dict[str, Path]:
    """The loop devices (path -> backing file) attached to any of `backing_files`."""
    wanted = {str(path.resolve()): path for path in backing_files}
    if not wanted:
        return {}
    listing = json.loads(_losetup("--list", "--json", "--output", "NAME,BACK-FILE") or "{}")
    found = {}
    for device in listing.get("loopdevices", []):
        back = str(device.get("back-file") or "").removesuffix(" (deleted)")
        if back in wanted:
            found[str(device["name"])] = wanted[back]
    return found


def detach(device: str) -> None:
    """Detach a loop device, first dropping partition nodes the kernel made for it."""
    subprocess.run(["partx", "--delete", device], capture_output=True, timeout=60)
    _losetup("--detach", device)
