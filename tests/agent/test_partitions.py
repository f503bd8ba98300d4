"""The config drive partition on real loop devices, checked with sgdisk and sfdisk (their own
verification and dumps), never with our table reader alone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from loopdev import LoopDevices, make_backing
from metal3.agent.configdrive import build_config_drive
from metal3.agent.partitions import (
    CONFIG_DRIVE_SIZE,
    NoPartitionTableError,
    PartitionTableError,
    prepare_config_drive_partition,
    read_table,
)

MiB = 1 << 20
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def _run(*args: str | Path, script: str | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LC_ALL": "C", "BLKID_FILE": "/dev/null"},
    )
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def _sfdisk_json(device: str | Path) -> dict[str, object]:
    table: dict[str, object] = json.loads(_run("sfdisk", "--json", device))["partitiontable"]
    return table


def _entries(device: str | Path) -> list[dict[str, object]]:
    parts = _sfdisk_json(device)["partitions"]
    assert isinstance(parts, list)
    return parts


def _gpt_image(path: Path, table_size: int, disk_size: int, *new: str) -> Path:
    """A GPT made for a disk of `table_size` bytes, in a file grown to `disk_size` (as after
    writing a small image onto a large disk)."""
    make_backing(path, table_size)
    _run("sgdisk", *(f"--new={spec}" for spec in new), path)
    os.truncate(path, disk_size)
    return path


def _mbr_image(path: Path, table_size: int, disk_size: int, script: str) -> Path:
    make_backing(path, table_size)
    _run("sfdisk", "--quiet", path, script="label: dos\n" + script)
    os.truncate(path, disk_size)
    return path


def test_gpt_backup_moves_to_the_disk_end_and_the_partition_follows_the_image(
    tmp_path: Path, loop_devices: LoopDevices
) -> None:
    backing = _gpt_image(tmp_path / "gpt", 64 * MiB, 256 * MiB, "1:2048:+8M", "2:0:+40M")
    disk = loop_devices.attach(backing)
    before = _entries(disk.path)
    verify = _run("sgdisk", "--verify", disk.path)
    assert "secondary header" in verify  # the backup sits at the image's end, not the disk's

    part = prepare_config_drive_partition(str(disk.path))

    assert (part.table, part.number, part.size, part.created) == ("gpt", 3, CONFIG_DRIVE_SIZE, True)
    verify = _run("sgdisk", "--verify", disk.path)
    assert "No problems found" in verify, verify
    table = _sfdisk_json(disk.path)
    entries = _entries(disk.path)
    assert entries[:2] == before  # the image's own partitions are untouched
    new = entries[2]
    assert new["start"] * 512 == part.offset
    assert new["size"] * 512 == CONFIG_DRIVE_SIZE
    assert new["type"] == LINUX_FS_GUID
    assert new["start"] > before[1]["start"] + before[1]["size"] - 1
    assert new["start"] % 2048 == 0
    last_usable = table["lastlba"]
    assert isinstance(last_usable, int)
    assert last_usable == disk.size // 512 - 34  # the table now spans the whole disk
    assert last_usable - (new["start"] + new["size"] - 1) < 2048  # at the end
    info = _run("sgdisk", "--info=3", disk.path)
    assert "Partition name: 'config-2'" in info
    with disk.path.open("rb") as f:
        f.seek(disk.size - 512)
        assert f.read(8) == b"EFI PART"  # the backup header is at the true end


def test_mbr_gets_a_primary_partition_over_the_last_64_mib(
    tmp_path: Path, loop_devices: LoopDevices
) -> None:
    script = "start=2048, size=40960, type=83, bootable\n"
    disk = loop_devices.attach(_mbr_image(tmp_path / "mbr", 64 * MiB, 200 * MiB, script))
    before = _entries(disk.path)

    part = prepare_config_drive_partition(str(disk.path))

    assert (part.table, part.number, part.size, part.created) == ("dos", 2, CONFIG_DRIVE_SIZE, True)
    assert "No errors detected" in _run("sfdisk", "--verify", disk.path)
    entries = _entries(disk.path)
    assert entries[0] == before[0]
    new = entries[1]
    assert new["type"] == "83"
    assert new["start"] * 512 == part.offset
    assert new["size"] * 512 == CONFIG_DRIVE_SIZE
    assert new["start"] + new["size"] == disk.size // 512  # ends at the last sector


def test_mbr_beyond_2_tib_ends_where_the_table_can_address(
    tmp_path: Path, loop_devices: LoopDevices
) -> None:
    size = (5 << 40) // 2  # 2.5 TiB, sparse
    disk = loop_devices.attach(
        _mbr_image(tmp_path / "big", 64 * MiB, size, "start=2048, size=8M\n")
    )

    part = prepare_config_drive_partition(str(disk.path))

    assert "No errors detected" in _run("sfdisk", "--verify", disk.path)
    new = _entries(disk.path)[1]
    end = new["start"] + new["size"]
    assert end <= 1 << 32
    assert (1 << 32) - end < 2048
    assert part.offset == new["start"] * 512


def test_mbr_with_four_primaries_is_refused_unchanged(
    tmp_path: Path, loop_devices: LoopDevices
) -> None:
    script = "".join(f"start={2048 + i * 8192}, size=8192, type=83\n" for i in range(4))
    disk = loop_devices.attach(_mbr_image(tmp_path / "full", 64 * MiB, 200 * MiB, script))
    before = _run("sfdisk", "--dump", disk.path)

    with pytest.raises(PartitionTableError, match="already has 4 primary partitions"):
        prepare_config_drive_partition(str(disk.path))

    assert _run("sfdisk", "--dump", disk.path) == before


def test_gpt_without_room_after_the_last_partition_is_refused_unchanged(
    tmp_path: Path, loop_devices: LoopDevices
) -> None:
    backing = _gpt_image(tmp_path / "tight", 128 * MiB, 128 * MiB, "1:2048:+8M", "2:0:0")
    disk = loop_devices.attach(backing)
    before = _run("sfdisk", "--dump", disk.path)

    with pytest.raises(PartitionTableError, match="no room for a 64 MiB config drive"):
        prepare_config_drive_partition(str(disk.path))

    assert _run("sfdisk", "--dump", disk.path) == before


def test_a_disk_without_a_table_is_refused(tmp_path: Path, loop_devices: LoopDevices) -> None:
    disk = loop_devices.new(64 * MiB)
    assert read_table(str(disk.path)) is None
    with pytest.raises(NoPartitionTableError, match="no partition table"):
        prepare_config_drive_partition(str(disk.path))


def test_a_config_2_partition_the_image_brings_is_reused(
    tmp_path: Path, loop_devices: LoopDevices
) -> None:
    backing = _gpt_image(tmp_path / "own", 96 * MiB, 256 * MiB, "1:2048:+16M", "2:0:+4M")
    start = _entries(backing)[1]["start"]
    assert isinstance(start, int)
    with backing.open("r+b") as f:
        f.seek(start * 512)
        f.write(build_config_drive(meta_data={"uuid": "from-the-image"}))
    disk = loop_devices.attach(backing)

    part = prepare_config_drive_partition(str(disk.path))

    assert (part.number, part.offset, part.created) == (2, start * 512, False)
    assert len(_entries(disk.path)) == 2  # no second config drive
    assert "No problems found" in _run("sgdisk", "--verify", disk.path)  # backup moved anyway
