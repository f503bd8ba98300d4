"""The test OS image's disk: an MBR with one bootable ext4 partition, booted by extlinux.

BIOS boot with no ESP: syslinux's `mbr.bin` in the first 440 bytes chain-loads the active
partition's boot sector, which `extlinux --install` writes together with `ldlinux.sys` into
`/boot/extlinux` (the menu is `boot/extlinux/extlinux.conf` of the root). The file system is
made from the root folder (`mkfs.ext4 -d`), then mounted once through a loop device for
extlinux. An MBR leaves the rest of a larger disk free, where the agent puts the config drive
as a primary partition. The raw disk is converted to a zstd-compressed qcow2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from metal3.lab.osimage.tools import OsImageError, run

log = logging.getLogger(__name__)

MiB = 1 << 20
PARTITION_START = 1 * MiB
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")
LABEL = "metal3-root"
# Free room in the file system beyond what the root holds (logs, cloud-init's state).
HEADROOM = 128 * MiB
# ext4 features syslinux 6.04's ext4 reader does not know are left off; the rest is the default,
# with 4 KiB blocks (mke2fs picks 1 KiB for a file system this small, which extlinux cannot
# load a kernel from: "I/O error").
EXT4_FEATURES = "^metadata_csum_seed,^orphan_file"


def tree_bytes(root: Path) -> int:
    """Bytes the files of ``root`` take (allocated blocks, not counting hard links twice)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, dirs, names in os.walk(root):
        for name in names + dirs:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def file_system_size(root: Path) -> int:
    """What the ext4 file system for ``root`` is made to hold: its files, a fifth more for
    the file system's own blocks, and `HEADROOM`, rounded up to 64 MiB."""
    want = tree_bytes(root) * 6 // 5 + HEADROOM
    step = 64 * MiB
    return (want + step - 1) // step * step


def make_raw_disk(root: Path, disk: Path, root_uuid: str) -> int:
    """Write the bootable raw disk for ``root`` to ``disk``; its size in bytes."""
    if not MBR_CODE.exists():
        raise OsImageError(f"{MBR_CODE} is missing (the syslinux-common package)")
    fs_size = file_system_size(root)
    size = PARTITION_START + fs_size
    with disk.open("wb") as handle:
        handle.truncate(size)
    table = f"label: dos\nstart={PARTITION_START // 512}, type=83, bootable\n"
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk], input_text=table)
    with disk.open("r+b") as handle:
        handle.write(MBR_CODE.read_bytes()[:440])
    with _partition_device(disk) as partition:
        run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                LABEL,
                "-U",
                root_uuid,
                "-b",
                "4096",
                "-O",
                EXT4_FEATURES,
                "-d",
                root,
                partition,
            ],
            timeout=600,
        )
        with _mounted(partition) as mountpoint:
            run(["extlinux", "--install", mountpoint / "boot/extlinux"])
    return size


def to_qcow2(raw: Path, qcow2: Path) -> dict[str, int]:
    """Convert ``raw`` to a zstd-compressed qcow2 (v3); its file and virtual sizes."""
    run(
        [
            "qemu-img",
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compat=1.1,compression_type=zstd",
            raw,
            qcow2,
        ],
        timeout=600,
    )
    info = json.loads(run(["qemu-img", "info", "--output=json", qcow2]))
    return {"file_size": qcow2.stat().st_size, "virtual_size": int(info["virtual-size"])}


@contextlib.contextmanager
def _partition_device(disk: Path) -> Iterator[Path]:
    """The disk's first partition as a block device (a loop device with partition nodes)."""
    loop = Path(run(["losetup", "--find", "--show", "--partscan", disk]).strip())
    try:
        partition = Path(f"{loop}p1")
        if not partition.exists():
            run(["partx", "--add", loop])  # --partscan does not always make the nodes
        for _ in range(50):
            if partition.exists():
                break
            time.sleep(0.1)
        else:
            raise OsImageError(f"{partition} did not appear after partx --add {loop}")
        yield partition
    finally:
        run(["partx", "--delete", loop], check=False)
        run(["losetup", "--detach", loop])


@contextlib.contextmanager
def _mounted(device: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="metal3-osimage-mnt-") as folder:
        mountpoint = Path(folder)
        run(["mount", "-t", "ext4", device, mountpoint])
        try:
            yield mountpoint
        finally:
            run(["umount", mountpoint])
