"""A disk's partition table as the config drive needs it: read it, add a partition at the end.

After an image is written its table describes the image, not the disk: a GPT backup header
sits at the end of the image, which may be far before the end of the disk. The config drive
goes in a new partition after the image's own ones, placed as ironic-python-agent places it:

- GPT: the backup header is first moved to the true end of the disk (``sgdisk -e``; here
  ``sfdisk --relocate gpt-bak-std``), then a 64 MiB partition of type 8300 (Linux file
  system) named ``config-2`` ends at the last usable sector.
- MBR: a primary partition of type 83 over the last 64 MiB the table can address (MBR
  addresses 2**32 sectors, so on a larger disk it ends there); a table that already has four
  primary partitions has no room for it.

An image that brings its own partition with a ``config-2`` file system keeps it, and the
config drive goes there. Tables are read with ``sfdisk --json`` and changed with ``sfdisk``
(which, unlike ``sgdisk``, does not sleep a second after each write), labels are read with
``blkid -p``; nothing here
tells the kernel (the caller does, once the disk holds everything). Works on disk images in
files as well as on block devices.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from metal3.agent.blockdev import ToolError, run_tool
from metal3.agent.errors import AgentError

CONFIG_DRIVE_SIZE = 64 << 20
"""Size of the config drive partition, as ironic-python-agent makes it."""

CONFIG_DRIVE_NAME = "config-2"
"""GPT partition name of the config drive (cloud-init finds it by its file system label)."""

ALIGNMENT = 1 << 20
"""Partitions start on a MiB boundary."""

_GPT_LINUX_FILESYSTEM = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # sgdisk's 8300
# sfdisk changes only the table: the kernel is told later; the new partition's content is
# written by the caller, so no signature wiping.
_SFDISK_WRITE = [
    "sfdisk",
    "--quiet",
    "--no-reread",
    "--no-tell-kernel",
    "--wipe=never",
    "--wipe-partitions=never",
]
_MBR_LINUX = "83"
_MBR_MAX_SECTORS = 1 << 32  # MBR start and size fields are 32 bits, in sectors
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # a ramdisk's PATH may lack them
_GPT_MAX_ENTRIES = 128  # the usual size of the entry array (sgdisk's and the UEFI minimum)


class PartitionTableError(AgentError):
    """The disk's partition table cannot take the config drive partition (or be read)."""


class NoPartitionTableError(PartitionTableError):
    """The disk holds no partition table sfdisk recognises (a bare file system, or nothing)."""


@dataclass(frozen=True)
class Partition:
    """One entry of a partition table; `start` and `sectors` in the table's sector size."""

    number: int
    start: int
    sectors: int

    @property
    def end(self) -> int:
        """The last sector of the partition."""
        return self.start + self.sectors - 1


@dataclass(frozen=True)
class PartitionTable:
    """A disk's table: its kind, sector size, entries and (GPT) last usable sector."""

    label: Literal["gpt", "dos"]
    sector_size: int
    partitions: tuple[Partition, ...]
    last_usable: int | None  # GPT only: the last sector a partition may use


@dataclass(frozen=True)
class ConfigDrivePartition:
    """The config drive partition: number, byte offset and byte size on the disk, and whether
    it was created (or is one the image brought, already labelled ``config-2``)."""

    table: Literal["gpt", "dos"]
    number: int
    offset: int
    size: int
    created: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "number": self.number,
            "offset": self.offset,
            "size": self.size,
            "created": self.created,
        }


def read_table(disk: str) -> PartitionTable | None:
    """The partition table on `disk`, or None when it has none sfdisk recognises.

    Raises `PartitionTableError` for a table of another kind (sfdisk reads gpt and dos
    here) and `metal3.agent.blockdev.ToolError` when sfdisk cannot read the disk at all.
    """
    done = run_tool(["sfdisk", "--json", disk], ok_codes=(0, 1))
    if done.returncode != 0:
        if "does not contain a recognized partition table" in done.stderr:
            return None
        said = done.stderr.strip()[-2000:] or "no output"
        raise ToolError("sfdisk", f"`sfdisk --json {disk}` failed: {said}", returncode=1)
    table = orjson.loads(done.stdout)["partitiontable"]
    label = table["label"]
    if label not in ("gpt", "dos"):
        raise PartitionTableError(f"{disk} has a {label} partition table; only GPT and MBR")
    node_prefix = str(table.get("device", disk))
    entries = tuple(
        Partition(
            number=_partition_number(node_prefix, entry["node"]),
            start=int(entry["start"]),
            sectors=int(entry["size"]),
        )
        for entry in table.get("partitions", [])
    )
    last = table.get("lastlba")
    return PartitionTable(
        label=label,
        sector_size=int(table.get("sectorsize", 512)),
        partitions=entries,
        last_usable=int(last) if last is not None else None,
    )


def _partition_number(device: str, node: str) -> int:
    """The number in a partition node's name as sfdisk gives it: sda3, loop0p3, disk.img3."""
    suffix = node.removeprefix(device)
    digits = suffix.removeprefix("p")
    if suffix == node or not digits.isdigit():
        raise PartitionTableError(f"cannot tell the partition number of {node} on {device}")
    return int(digits)


def prepare_config_drive_partition(
    disk: str, *, size: int = CONFIG_DRIVE_SIZE
) -> ConfigDrivePartition:
    """The partition on `disk` that is to receive the config drive (see the module docstring).

    A partition whose file system is already labelled ``config-2`` (an image that brings
    its own) is used as it is, as ironic-python-agent does, so the disk never holds two;
    otherwise one of `size` bytes is added after the last partition. On GPT the backup header
    is moved to the end of the disk first, in both cases. Raises `NoPartitionTableError` when
    the disk has no table, `PartitionTableError` when the table has no room after its last
    partition (the table is unchanged then, but for the GPT backup header's move).
    """
    table = read_table(disk)
    if table is None:
        raise NoPartitionTableError(
            f"{disk} has no partition table (the image is a bare file system or none): "
            "there is nowhere to put a config drive partition"
        )
    if table.label == "gpt":
        table = _move_gpt_backup(disk)
    existing = find_labelled_partition(disk, table)
    if existing is not None:
        ss = table.sector_size
        return ConfigDrivePartition(
            table=table.label,
            number=existing.number,
            offset=existing.start * ss,
            size=existing.sectors * ss,
            created=False,
        )
    if table.label == "gpt":
        return _add_gpt(disk, table, size)
    return _add_mbr(disk, table, size)


def move_gpt_backup_to_end(disk: str) -> PartitionTable | None:
    """Move a GPT's backup header and entries to the true end of `disk` (an image smaller than
    the disk leaves them at the image's end) and return the table; a disk with an MBR or no
    table is left alone."""
    table = read_table(disk)
    if table is None or table.label != "gpt":
        return table
    return _move_gpt_backup(disk)


def _move_gpt_backup(disk: str) -> PartitionTable:
    run_tool([*_SFDISK_WRITE, "--relocate", "gpt-bak-std", disk])
    moved = read_table(disk)
    if moved is None or moved.label != "gpt" or moved.last_usable is None:
        raise PartitionTableError(f"{disk}: the GPT is gone after moving its backup header")
    return moved


def find_labelled_partition(
    disk: str, table: PartitionTable, labels: tuple[str, ...] = ("config-2", "CONFIG-2")
) -> Partition | None:
    """The first partition whose file system label is one of `labels` (cloud-init accepts
    both spellings), probed with ``blkid -p`` at the partition's place on `disk`."""
    ss = table.sector_size
    for partition in table.partitions:
        done = run_tool(
            [
                "blkid",
                "--probe",
                "--output=export",
                f"--offset={partition.start * ss}",
                f"--size={partition.sectors * ss}",
                disk,
            ],
            ok_codes=(0, 2),  # 2: nothing found
        )
        if any(line in {f"LABEL={label}" for label in labels} for line in done.stdout.split()):
            return partition
    return None


def _add_gpt(disk: str, table: PartitionTable, size: int) -> ConfigDrivePartition:
    assert table.last_usable is not None
    ss = table.sector_size
    sectors = size // ss
    start = _align_down(table.last_usable + 1 - sectors, ALIGNMENT // ss)
    _check_room(disk, table, start, size)
    used = {p.number for p in table.partitions}
    free = [n for n in range(1, _GPT_MAX_ENTRIES + 1) if n not in used]
    if not free:
        raise PartitionTableError(f"{disk}: all {_GPT_MAX_ENTRIES} GPT entries are in use")
    number = free[0]
    _sfdisk_script(
        disk,
        number,
        f"start={start}, size={sectors}, type={_GPT_LINUX_FILESYSTEM}, name={CONFIG_DRIVE_NAME}",
    )
    return _confirm(disk, "gpt", number, start, sectors)


def _add_mbr(disk: str, table: PartitionTable, size: int) -> ConfigDrivePartition:
    ss = table.sector_size
    primaries = {p.number for p in table.partitions if p.number <= 4}
    if len(primaries) == 4:
        raise PartitionTableError(
            f"{disk}: its MBR already has 4 primary partitions, so no config drive partition "
            "can be added"
        )
    sectors = size // ss
    limit = min(_size(disk) // ss, _MBR_MAX_SECTORS)
    start = _align_down(limit - sectors, ALIGNMENT // ss)
    _check_room(disk, table, start, size)
    number = min(n for n in range(1, 5) if n not in primaries)
    _sfdisk_script(disk, number, f"start={start}, size={sectors}, type={_MBR_LINUX}")
    return _confirm(disk, "dos", number, start, sectors)


def _sfdisk_script(disk: str, number: int, line: str) -> None:
    """Make partition `number` on `disk` as the sfdisk script `line` says.

    `run_tool` gives tools no input, and sfdisk reads its script from standard input.
    """
    argv = [*_SFDISK_WRITE, f"--partno={number}", disk]
    script = line + "\n"
    exe = shutil.which("sfdisk", path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))
    if exe is None:
        raise ToolError("sfdisk", "sfdisk (package fdisk) is not installed")
    try:
        done = subprocess.run(
            [exe, *argv[1:]],
            input=script,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError("sfdisk", f"`{' '.join(argv)}` failed: {exc}") from exc
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip())[-2000:]
        raise ToolError(
            "sfdisk",
            f"`{' '.join(argv)}` with input {script.strip()!r} failed (exit {done.returncode}): "
            f"{said or 'no output'}",
            returncode=done.returncode,
        )


def _check_room(disk: str, table: PartitionTable, start: int, size: int) -> None:
    """Refuse a partition at `start` that would not come after every existing partition."""
    last = max((p.end for p in table.partitions), default=0)
    if start <= last:
        room = (_size(disk) // table.sector_size - 1 - last) * table.sector_size
        raise PartitionTableError(
            f"{disk}: no room for a {size / (1 << 20):g} MiB config drive partition after "
            f"the last partition (it ends at sector {last}; about {max(room, 0) >> 20} MiB "
            "follow it)"
        )


def _confirm(
    disk: str, label: Literal["gpt", "dos"], number: int, start: int, sectors: int
) -> ConfigDrivePartition:
    """Read the table back: the tool must have made exactly the partition asked for."""
    table = read_table(disk)
    found = [p for p in table.partitions if p.number == number] if table else []
    if not found or (found[0].start, found[0].sectors) != (start, sectors):
        raise PartitionTableError(
            f"{disk}: partition {number} is not at sectors {start}+{sectors} after adding it"
        )
    assert table is not None
    ss = table.sector_size
    return ConfigDrivePartition(
        table=label, number=number, offset=start * ss, size=sectors * ss, created=True
    )


def _align_down(sector: int, alignment: int) -> int:
    return sector - sector % alignment


def _size(disk: str) -> int:
    """The size in bytes of a block device or a disk image file."""
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
