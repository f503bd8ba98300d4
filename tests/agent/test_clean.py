"""Metadata cleaning on real loop devices, judged by the reference tools: after `clean_disk`,
`wipefs --no-act` and `blkid -p` find nothing, `mdadm --examine` finds no superblock and LVM no
PV, also where the partitions were. A disk in use is refused and left as it was.

This kernel has no md driver (no /proc/mdstat), so `mdadm --create` cannot run here: md
member superblocks are written in the md 1.x on-disk format by `write_md_superblock` and
`mdadm --examine` (the reference reader) must accept them before each test cleans them.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loopdev import LoopDevice, LoopDevices
from metal3.agent.blockdev import DiskInUseError, NotADiskError
from metal3.agent.clean import CleanError, clean_disk

MiB = 1 << 20
DISK = 64 * MiB
PROBE_ENV = {**os.environ, "BLKID_FILE": "/dev/null", "LC_ALL": "C"}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=PROBE_ENV, check=check)


def wipefs_finds(path: str) -> str:
    return sh("wipefs", "--no-act", path).stdout.strip()


def blkid_finds(path: str, *, offset: int | None = None, size: int | None = None) -> str:
    """`blkid -p` (low-level probe, no cache), optionally of the region [offset, offset+size)."""
    region = ["--offset", str(offset), "--size", str(size)] if offset is not None else []
    done = sh("blkid", "--probe", *region, path, check=False)
    if done.returncode == 2:
        return ""
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def partition_nodes(dev: str) -> list[str]:
    name = Path(dev).name
    return sorted(f"/dev/{p.name}" for p in Path("/sys/block", name).glob(f"{name}p*"))


def fresh_disk(loop_devices: LoopDevices, size: int = DISK) -> LoopDevice:
    """A new loop device without partitions: the kernel keeps a loop device's partitions
    after it is detached, so another test's leftovers are dropped first."""
    dev = loop_devices.new(size)
    if partition_nodes(str(dev.path)):
        sh("partx", "--delete", str(dev.path))
    assert partition_nodes(str(dev.path)) == []
    return dev


@contextmanager
def gpt(dev: LoopDevice, *sizes_mib: int) -> Iterator[list[str]]:
    """A GPT with partitions of these sizes (0: the rest), their nodes made by `partx`;
    the kernel's partitions are dropped at the end so the loop device is left bare."""
    args = [f"-n{i}:0:{f'+{s}M' if s else '0'}" for i, s in enumerate(sizes_mib, 1)]
    sh("sgdisk", *args, str(dev.path))
    sh("partx", "--add", str(dev.path))
    try:
        nodes = partition_nodes(str(dev.path))
        assert len(nodes) == len(sizes_mib)
        yield nodes
    finally:
        if partition_nodes(str(dev.path)):
            sh("partx", "--delete", str(dev.path))


def partition_region(dev: str, number: int) -> tuple[int, int]:
    """(offset, size) in bytes of partition `number`, read from the table by `sfdisk`."""
    line = sh("sfdisk", "--dump", dev).stdout
    for entry in line.splitlines():
        if entry.startswith(f"{dev}p{number} "):
            fields = dict(f.strip().split("=", 1) for f in entry.split(":", 1)[1].split(","))
            return int(fields["start"].strip()) * 512, int(fields["size"].strip()) * 512
    raise AssertionError(f"no partition {number} in {line}")


@contextmanager
def region_device(dev: str, offset: int, size: int) -> Iterator[str]:
    """A read-only loop device over [offset, offset+size) of `dev`, for readers that take
    only a device (mdadm, LVM): where a partition was, after its node is gone."""
    done = sh(
        "losetup", "--find", "--show", "--read-only",
        "--offset", str(offset), "--sizelimit", str(size), dev,
    )  # fmt: skip
    path = done.stdout.strip()
    try:
        yield path
    finally:
        sh("losetup", "--detach", path)


def write_md_superblock(path: str, version: str) -> None:
    """An md RAID1 member superblock (2 devices) as mdadm writes it: 1.2 at 4 KiB from the
    start, 1.0 in the last 8-12 KiB (format: the kernel's struct mdp_superblock_1)."""
    fd = os.open(path, os.O_RDWR)
    try:
        sectors = os.lseek(fd, 0, os.SEEK_END) // 512
        if version == "1.2":
            super_offset, data_offset, data_size = 8, 2048, sectors - 2048
        else:
            super_offset = (sectors - 16) & ~7
            data_offset, data_size = 0, super_offset
        sb = bytearray(1024)
        now = int(time.time())
        struct.pack_into("<4I", sb, 0, 0xA92B4EFC, 1, 0, 0)  # magic, major_version
        sb[16:32] = uuid.uuid4().bytes  # set_uuid
        sb[32:64] = b"metal3-test:0".ljust(32, b"\0")
        struct.pack_into("<QIIQII", sb, 64, now, 1, 0, data_size, 0, 2)  # ctime, level 1...
        struct.pack_into("<QQQ", sb, 128, data_offset, data_size, super_offset)
        sb[168:184] = uuid.uuid4().bytes  # device_uuid
        struct.pack_into("<QQQ", sb, 192, now, 1, 2**64 - 1)  # utime, events, resync_offset
        struct.pack_into("<I", sb, 220, 2)  # max_dev
        struct.pack_into("<HH", sb, 256, 0, 0xFFFF)  # dev_roles: this one is slot 0
        words = struct.unpack_from("<65I", sb)  # 256 + 2*2 bytes, sb_csum (word 54) still 0
        total = sum(words)
        struct.pack_into("<I", sb, 216, ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF)
        os.pwrite(fd, bytes(sb), super_offset * 512)
        os.fsync(fd)
    finally:
        os.close(fd)


def mdadm_examine(path: str) -> subprocess.CompletedProcess[str]:
    return sh("mdadm", "--examine", path, check=False)


@contextmanager
def private_lvm(tmp_path: Path, *devices: str) -> Iterator[dict[str, str]]:
    """An environment for LVM tools that sees only `devices` and keeps no backups, so the
    tests neither read nor leave anything in the machine's LVM setup."""
    conf = tmp_path / "lvm"
    conf.mkdir(exist_ok=True)
    accept = ", ".join(f'"a|^{d}$|"' for d in devices)
    (conf / "lvm.conf").write_text(
        "devices {\n"
        f'  filter = [ {accept}, "r|.*|" ]\n'
        "  use_devicesfile = 0\n"
        "  obtain_device_list_from_udev = 0\n"
        "}\n"
        "backup {\n  backup = 0\n  archive = 0\n}\n"
    )
    yield {**PROBE_ENV, "LVM_SYSTEM_DIR": str(conf), "LVM_SUPPRESS_FD_WARNINGS": "1"}


def lvm(env: dict[str, str], *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=check)


def read_ends(path: str) -> tuple[bytes, bytes]:
    with open(path, "rb") as f:
        first = f.read(MiB)
        f.seek(-MiB, os.SEEK_END)
        return first, f.read(MiB)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def assert_nothing_found(dev: str) -> None:
    assert wipefs_finds(dev) == ""
    assert blkid_finds(dev) == ""
    assert partition_nodes(dev) == []


def test_gpt_and_ext4_are_erased(loop_devices: LoopDevices) -> None:
    dev = fresh_disk(loop_devices)
    disk = str(dev.path)
    with gpt(dev, 24, 0) as (part1, _part2):
        sh("mkfs.ext4", "-q", part1)
        offset, size = partition_region(disk, 1)
        assert "gpt" in wipefs_finds(disk) and "PMBR" in wipefs_finds(disk)
        assert 'TYPE="ext4"' in blkid_finds(disk, offset=offset, size=size)

        result = clean_disk(disk)

        assert_nothing_found(disk)
        assert blkid_finds(disk, offset=offset, size=size) == "", "the ext4 is still there"
        first, last = read_ends(disk)
        assert first == bytes(MiB), "MBR or primary GPT left"
        assert last == bytes(MiB), "backup GPT left"
    assert result.device == disk
    assert result.mode == "metadata"
    assert f"{part1}: ext4 at 0x438" in result.erased
    assert {e.split(": ", 1)[1].split(" at ")[0] for e in result.erased} >= {"gpt", "PMBR"}
    assert result.seconds > 0
    assert result.to_json()["erased"] == result.erased


def test_partitions_unknown_to_the_kernel_are_wiped_too(loop_devices: LoopDevices) -> None:
    """The table is read from the disk: a partition the kernel has no node for (a loop
    device without partscan) still gets its file system erased."""
    dev = fresh_disk(loop_devices)
    disk = str(dev.path)
    with gpt(dev, 24) as (part1,):
        sh("mkfs.ext4", "-q", part1)
        sh("partx", "--delete", disk)
        offset, size = partition_region(disk, 1)
        assert partition_nodes(disk) == []
        assert 'TYPE="ext4"' in blkid_finds(disk, offset=offset, size=size)

        clean_disk(disk)

        assert_nothing_found(disk)
        assert blkid_finds(disk, offset=offset, size=size) == ""


@pytest.mark.parametrize("version", ["1.2", "1.0"])
def test_md_member_disk_is_erased(loop_devices: LoopDevices, version: str) -> None:
    disk = str(fresh_disk(loop_devices).path)
    write_md_superblock(disk, version)
    before = mdadm_examine(disk)
    assert before.returncode == 0, before.stderr
    assert f"Version : {version}" in before.stdout
    assert "correct" in before.stdout, "mdadm must accept the superblock's checksum"
    assert "linux_raid_member" in wipefs_finds(disk)

    result = clean_disk(disk)

    assert_nothing_found(disk)
    after = mdadm_examine(disk)
    assert after.returncode != 0
    assert "No md superblock detected" in after.stderr
    assert any("linux_raid_member" in e for e in result.erased)


def test_md_member_partition_with_superblock_at_its_end_is_erased(
    loop_devices: LoopDevices,
) -> None:
    """md 1.0 keeps its superblock at the end of the member: here the end of partition 2,
    in the middle of the disk, where only wiping the partition finds it."""
    dev = fresh_disk(loop_devices)
    disk = str(dev.path)
    with gpt(dev, 16, 16, 0) as (_p1, part2, _p3):
        write_md_superblock(part2, "1.0")
        offset, size = partition_region(disk, 2)
        with region_device(disk, offset, size) as region:
            assert "Version : 1.0" in mdadm_examine(region).stdout

        result = clean_disk(disk)

        assert_nothing_found(disk)
        assert blkid_finds(disk, offset=offset, size=size) == ""
        with region_device(disk, offset, size) as region:
            assert "No md superblock detected" in mdadm_examine(region).stderr
    assert any(e.startswith(f"{part2}: linux_raid_member") for e in result.erased)


@pytest.mark.parametrize("on_partition", [False, True], ids=["whole-disk", "partition"])
def test_lvm_pv_is_erased(loop_devices: LoopDevices, tmp_path: Path, on_partition: bool) -> None:
    dev = fresh_disk(loop_devices)
    disk = str(dev.path)
    with gpt(dev, 0) if on_partition else _no_table() as parts:
        member = parts[0] if on_partition else disk
        vg = f"metal3test{uuid.uuid4().hex[:8]}"
        with private_lvm(tmp_path, member) as env:
            try:
                lvm(env, "pvcreate", "--yes", member)
                lvm(env, "vgcreate", vg, member)
                assert vg in lvm(env, "pvs", "--noheadings", "-o", "vg_name", member).stdout
                if not on_partition:
                    # Each metadata change writes LVM's metadata text further into its ring
                    # buffer, here past the 34 sectors that sgdisk and wipefs overwrite.
                    for i in range(16):
                        lvm(env, "vgchange", "--addtag", f"t{i}", vg)
                    assert read_ends(disk)[0].rfind(vg.encode()) > 34 * 512
                offset, size = partition_region(disk, 1) if on_partition else (0, DISK)

                clean_disk(disk)

                assert_nothing_found(disk)
                assert blkid_finds(disk, offset=offset, size=size) == ""
                if not on_partition:  # LVM's metadata text follows its label, in the first MiB
                    assert vg.encode() not in read_ends(disk)[0]
                with (
                    region_device(disk, offset, size) as region,
                    private_lvm(tmp_path, region) as region_env,
                ):
                    pvs = lvm(region_env, "pvs", region, check=False)
                    assert pvs.returncode != 0, pvs.stdout
                    vgs = lvm(region_env, "vgs", vg, check=False)
                    assert vgs.returncode != 0, vgs.stdout
            finally:
                if lvm(env, "vgs", vg, check=False).returncode == 0:
                    lvm(env, "vgremove", "--force", vg, check=False)
                if lvm(env, "pvs", member, check=False).returncode == 0:
                    lvm(env, "pvremove", "--force", "--force", "--yes", member, check=False)


@contextmanager
def _no_table() -> Iterator[list[str]]:
    yield []


def test_mounted_partition_is_refused(loop_devices: LoopDevices, tmp_path: Path) -> None:
    dev = fresh_disk(loop_devices)
    disk = str(dev.path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with gpt(dev, 24, 0) as (part1, _part2):
        sh("mkfs.ext4", "-q", part1)
        sh("mount", part1, str(mnt))
        try:
            with pytest.raises(DiskInUseError) as refused:
                clean_disk(disk)
            assert f"{part1} is mounted at {mnt}" in str(refused.value)
            assert "ext4" in wipefs_finds(part1), "the mounted file system was touched"
            assert "gpt" in wipefs_finds(disk), "the partition table was touched"
        finally:
            sh("umount", str(mnt))


def test_mounted_whole_disk_is_refused(loop_devices: LoopDevices, tmp_path: Path) -> None:
    disk = str(fresh_disk(loop_devices).path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mkfs.ext4", "-q", disk)
    sh("mount", disk, str(mnt))
    try:
        with pytest.raises(DiskInUseError, match=f"{disk} is mounted at {mnt}"):
            clean_disk(disk)
        assert "ext4" in wipefs_finds(disk)
    finally:
        sh("umount", str(mnt))


def test_disk_with_active_swap_is_refused(loop_devices: LoopDevices) -> None:
    dev = fresh_disk(loop_devices)
    disk = str(dev.path)
    with gpt(dev, 16, 0) as (_part1, part2):
        sh("mkswap", "-q", part2)
        before = digest(disk)
        sh("swapon", part2)
        try:
            with pytest.raises(DiskInUseError, match=f"{part2} is in use as swap"):
                clean_disk(disk)
        finally:
            sh("swapoff", part2)
        assert digest(disk) == before, "a refused disk was written to"


def test_disabled_mode_touches_nothing(loop_devices: LoopDevices) -> None:
    dev = fresh_disk(loop_devices)
    disk = str(dev.path)
    with gpt(dev, 24, 0) as (part1, _part2):
        sh("mkfs.ext4", "-q", part1)
        before = digest(disk)
        result = clean_disk(disk, mode="disabled")
        assert digest(disk) == before
        assert partition_nodes(disk) == [part1, _part2]
    assert result.to_json() == {
        "device": disk,
        "mode": "disabled",
        "erased": [],
        "seconds": result.seconds,
    }


def test_bad_arguments_are_clear_errors(loop_devices: LoopDevices, tmp_path: Path) -> None:
    dev = fresh_disk(loop_devices)
    disk = str(dev.path)
    with pytest.raises(CleanError, match="unknown cleaning mode 'secure'"):
        clean_disk(disk, mode="secure")
    with pytest.raises(NotADiskError, match="no such device"):
        clean_disk(str(tmp_path / "missing"))
    plain = tmp_path / "file"
    plain.write_bytes(b"x" * 4096)
    with pytest.raises(NotADiskError, match="is not a block device"):
        clean_disk(str(plain))
    with gpt(dev, 24) as (part1,):
        sh("mkfs.ext4", "-q", part1)
        with pytest.raises(NotADiskError, match=f"{part1} is a partition of {disk}"):
            clean_disk(part1)
        assert "ext4" in wipefs_finds(part1)
