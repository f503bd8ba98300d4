"""Metadata cleaning, as Ironic's agent does it: erase what makes a disk look used, not the data.

The same steps as ironic-python-agent's `erase_devices_metadata` (partitions first, then the
disk) and ironic-lib's `destroy_disk_metadata` (`wipefs --force --all`, `sgdisk -Z`, zeros at
both ends): partition tables (both GPT headers, the MBR), file-system, md RAID and LVM
signatures go, so `wipefs` and `blkid` find nothing afterwards. Before anything is written the
disk is checked not to be mounted, swapped on, held by md/LVM or under `/`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from metal3.agent.blockdev import (
    BlockDevice,
    DiskAccessError,
    ensure_not_in_use,
    find_disk,
    partitions,
    run_tool,
    size_bytes,
)
from metal3.agent.errors import AgentError

log = logging.getLogger(__name__)

CLEAN_MODES = ("metadata", "disabled")
# Zeroed at each end of the disk: more than the 33 sectors ironic-lib zeroes, so that with
# 4 KiB sectors the GPT arrays, and at the end md 0.90/1.0 superblocks, go too.
ZEROED_AT_EACH_END = 1 << 20

_ERASED_LINE = re.compile(
    r"^(?P<device>\S+): \d+ bytes? (?:were|was) erased at offset (?P<offset>0x[0-9a-f]+)"
    r" \((?P<type>[^)]*)\)"
)


class CleanError(AgentError):
    """Cleaning could not be done as asked (bad mode) or did not leave the disk clean."""


@dataclass
class CleanResult:
    """What one cleaning did: the disk, the mode, the signatures erased and the time taken."""

    device: str
    mode: str
    erased: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def clean_disk(device: str, mode: str = "metadata") -> CleanResult:
    """Clean the whole disk at `device` in `mode` (`metadata` or `disabled`).

    `disabled` checks that `device` is a whole disk and touches nothing. `metadata` refuses a
    disk in use (`metal3.agent.blockdev.DiskInUseError`), then erases every signature on each
    partition (those in the on-disk table too, made known to the kernel with `partx -u`) and
    on the disk, zaps the GPT and MBR (`sgdisk -Z`), zeroes the first and last MiB, drops the
    kernel's partitions and checks that `wipefs` finds nothing left. `erased` lists each
    signature erased as "<device>: <type> at <offset>".
    """
    if mode not in CLEAN_MODES:
        raise CleanError(f"unknown cleaning mode {mode!r}: use one of {', '.join(CLEAN_MODES)}")
    started = time.monotonic()
    disk = find_disk(device)
    result = CleanResult(device=disk.path, mode=mode)
    if mode == "metadata":
        ensure_not_in_use(disk)
        result.erased = _erase_metadata(disk)
    result.seconds = time.monotonic() - started
    log.info("cleaned %s (%s): %d signatures erased", disk.path, mode, len(result.erased))
    return result


def _erase_metadata(disk: BlockDevice) -> list[str]:
    if any(s["usage"] == "partition-table" for s in _signatures(disk.path)):
        # Make the kernel's partitions match the table on the disk, so that partitions it
        # has not seen yet (a loop device without partscan) get nodes to be wiped through.
        run_tool(["partx", "--update", disk.path])
    erased: list[str] = []
    for part in partitions(disk):
        erased.extend(_wipe_signatures(part.path))
    erased.extend(_wipe_signatures(disk.path))
    run_tool(["sgdisk", "--zap-all", disk.path])
    _zero_ends(disk)
    if partitions(disk):
        run_tool(["partx", "--delete", disk.path])
    _check_clean(disk)
    return erased


def _signatures(path: str) -> list[dict[str, str]]:
    """The signatures libblkid finds on `path` (device, offset, type, usage), erasing none."""
    done = run_tool(["wipefs", "--json", "--output", "DEVICE,OFFSET,TYPE,USAGE", path])
    if not done.stdout.strip():
        return []
    found: list[dict[str, str]] = json.loads(done.stdout)["signatures"]
    return found


def _wipe_signatures(path: str) -> list[str]:
    """Erase every signature libblkid finds on `path`; describe each one erased."""
    done = run_tool(["wipefs", "--force", "--all", path])
    erased = []
    for line in done.stdout.splitlines():
        match = _ERASED_LINE.match(line.strip())
        if match is None:
            continue
        offset = int(match["offset"], 16)
        erased.append(f"{match['device']}: {match['type']} at {offset:#x}")
    return erased


def _zero_ends(disk: BlockDevice) -> None:
    """Write zeros over the first and last MiB (less on a smaller disk) and flush them."""
    size = size_bytes(disk)
    length = min(ZEROED_AT_EACH_END, size)
    zeros = bytes(length)
    try:
        fd = os.open(disk.path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskAccessError(f"cannot open {disk.path} for writing: {exc.strerror}") from exc
    try:
        for offset in sorted({0, size - length}):
            written = os.pwrite(fd, zeros, offset)
            if written != length:
                raise DiskAccessError(
                    f"short write on {disk.path} at {offset:#x}: {written} of {length} bytes"
                )
        os.fsync(fd)
    except OSError as exc:
        raise DiskAccessError(f"cannot zero the ends of {disk.path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _check_clean(disk: BlockDevice) -> None:
    """Fail unless `wipefs` finds no signature and the kernel lists no partition."""
    left = _signatures(disk.path)
    if left:
        kinds = ", ".join(f"{s['type']} at {s['offset']}" for s in left)
        raise CleanError(f"signatures remain on {disk.path} after cleaning: {kinds}")
    remaining = partitions(disk)
    if remaining:
        names = ", ".join(p.path for p in remaining)
        raise CleanError(f"the kernel still lists partitions of {disk.path}: {names}")
