"""Block-device facts on real devices (loop devices, this machine's root disk), checked against
the reference tools (`blockdev`, `sfdisk`, `findmnt`, `lsblk`); and the uses this kernel cannot
produce (it has neither md nor device-mapper) on a sysfs/procfs tree laid out as the kernel
lays it out, with an md array and an LVM (device-mapper) volume holding the running system."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from loopdev import LoopDevices
from metal3.agent.blockdev import (
    BlockDevice,
    DiskInUseError,
    ToolError,
    ensure_not_in_use,
    find_disk,
    partitions,
    run_tool,
    size_bytes,
    usage_reasons,
)

MiB = 1 << 20


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def test_run_tool_names_a_missing_tool() -> None:
    with pytest.raises(ToolError, match="metal3-no-such-tool is not installed") as missing:
        run_tool(["metal3-no-such-tool", "--help"])
    assert missing.value.tool == "metal3-no-such-tool"


def test_run_tool_reports_the_failure_in_the_tools_words(tmp_path: Path) -> None:
    target = tmp_path / "missing"
    with pytest.raises(ToolError) as failed:
        run_tool(["wipefs", str(target)])
    message = str(failed.value)
    assert f"`wipefs {target}` failed (exit {failed.value.returncode})" in message
    assert failed.value.returncode not in (None, 0)
    assert "No such file or directory" in message
    assert failed.value.tool == "wipefs"


def test_run_tool_accepts_the_exit_codes_asked_for(loop_devices: LoopDevices) -> None:
    blank = str(loop_devices.new(MiB).path)
    probe = ["blkid", "--probe", blank]
    assert run_tool(probe, ok_codes=(0, 2)).returncode == 2  # blkid: "nothing found"
    with pytest.raises(ToolError, match=r"failed \(exit 2\)"):
        run_tool(probe)


def test_run_tool_stops_a_hung_tool() -> None:
    with pytest.raises(ToolError, match=r"`sleep 30` did not finish within 0.2 s"):
        run_tool(["sleep", "30"], timeout=0.2)


def test_disk_facts_match_the_kernel_tools(loop_devices: LoopDevices, tmp_path: Path) -> None:
    dev = loop_devices.new(48 * MiB)
    if list(Path("/sys/block", dev.path.name).glob(f"{dev.path.name}p*")):
        # The kernel keeps a loop device's partitions after a detach: another test's.
        sh("partx", "--delete", str(dev.path))
    link = tmp_path / "by-something"
    link.symlink_to(dev.path)
    disk = find_disk(str(link))
    st = os.stat(dev.path)
    assert disk.path == str(dev.path)
    assert disk.name == dev.path.name
    assert disk.devno == (os.major(st.st_rdev), os.minor(st.st_rdev))
    assert size_bytes(disk) == int(sh("blockdev", "--getsize64", str(dev.path)))
    assert partitions(disk) == []

    sh("sgdisk", "-n1:0:+10M", "-n2:0:+7M", "-n3:0:0", str(dev.path))
    sh("partx", "--add", str(dev.path))
    try:
        found = partitions(disk)
        dump = sh("sfdisk", "--dump", str(dev.path))
        expected = []
        for line in dump.splitlines():
            if line.startswith(f"{dev.path}p"):
                node, rest = line.split(" : ")
                fields = dict(f.strip().split("=", 1) for f in rest.split(","))
                expected.append(
                    (node, int(node.rsplit("p", 1)[1]), int(fields["start"]), int(fields["size"]))
                )
        assert [(p.path, p.number, p.start, p.sectors) for p in found] == expected
        assert len(expected) == 3
        for part in found:
            pst = os.stat(part.path)
            assert part.devno == (os.major(pst.st_rdev), os.minor(pst.st_rdev))
        assert usage_reasons(disk) == []
        ensure_not_in_use(disk)
    finally:
        sh("partx", "--delete", str(dev.path))


def test_root_disk_holds_the_running_system() -> None:
    """The disk under `/` of this machine, as findmnt and lsblk name it, is refused."""
    source = sh("findmnt", "--noheadings", "--output", "SOURCE", "--target", "/")
    assert Path(source).is_block_device(), f"/ is not on a block device here: {source}"
    parent = sh("lsblk", "--noheadings", "--nodeps", "--output", "PKNAME", source)
    root_disk = f"/dev/{parent}" if parent else source
    disk = find_disk(root_disk)
    with pytest.raises(DiskInUseError) as refused:
        ensure_not_in_use(disk)
    assert f"{root_disk} holds the running system" in str(refused.value)
    assert any(r.endswith("is mounted at /") for r in refused.value.reasons)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def _block(
    sysfs: Path, directory: Path, devno: str, *, part: tuple[int, int, int] | None = None
) -> None:
    """A block device directory as sysfs has it, with its /sys/dev/block/MAJ:MIN link."""
    _write(directory / "dev", devno + "\n")
    _write(directory / "uevent", f"MAJOR={devno.split(':')[0]}\nDEVNAME={directory.name}\n")
    (directory / "holders").mkdir(parents=True, exist_ok=True)
    if part is None:
        (directory / "slaves").mkdir(exist_ok=True)
        _write(directory / "size", "8388608\n")
    else:
        number, start, size = part
        _write(directory / "partition", f"{number}\n")
        _write(directory / "start", f"{start}\n")
        _write(directory / "size", f"{size}\n")
    _link(sysfs / "dev" / "block" / devno, directory)
    _link(sysfs / "class" / "block" / directory.name, directory)


def _hold(holder: Path, held: Path) -> None:
    """`holder` (an md array or dm target) is built on `held`: holders/ and slaves/ links."""
    _link(held / "holders" / holder.name, holder)
    _link(holder / "slaves" / held.name, held)


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, Path, dict[str, BlockDevice]]:
    """A machine with two SCSI disks: sdz has an md RAID member (sdz1, in md127), an LVM PV
    (sdz2, under dm-0 which is mounted at /) and a swap partition (sdz3); sdy is a whole-disk
    md member (of md0) and also has a mount with a space in its path; sdx is unused."""
    sysfs, proc = tmp_path / "sys", tmp_path / "proc"
    host = sysfs / "devices" / "pci0000:00" / "0000:00:10.0" / "host0"
    virtual = sysfs / "devices" / "virtual" / "block"
    sdz, sdy, sdx = host / "block" / "sdz", host / "block" / "sdy", host / "block" / "sdx"
    _block(sysfs, sdz, "8:0")
    for number, devno in ((1, "8:1"), (2, "8:2"), (3, "8:3")):
        _block(sysfs, sdz / f"sdz{number}", devno, part=(number, 2048 * number, 2048))
    _block(sysfs, sdy, "8:16")
    _block(sysfs, sdx, "8:32")
    for name, devno in (("md127", "9:127"), ("md0", "9:0"), ("dm-0", "253:0")):
        _block(sysfs, virtual / name, devno)
    _hold(virtual / "md127", sdz / "sdz1")
    _hold(virtual / "dm-0", sdz / "sdz2")
    _hold(virtual / "md0", sdy)
    _write(
        proc / "self" / "mountinfo",
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "27 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg0-root rw\n"
        "45 27 8:16 / /mnt/with\\040space rw,relatime - ext4 /dev/sdy rw\n",
    )
    _write(
        proc / "swaps",
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/sdz3                               partition\t1048572\t\t0\t\t-2\n",
    )
    disks = {
        d.name: BlockDevice(path=f"/dev/{d.name}", name=d.name, sysfs=d, devno=(8, 16 * i))
        for i, d in enumerate((sdz, sdy, sdx))
    }
    return sysfs, proc, disks


def test_recorded_holders_swap_and_running_system(
    recorded: tuple[Path, Path, dict[str, BlockDevice]],
) -> None:
    sysfs, proc, disks = recorded
    assert usage_reasons(disks["sdz"], sysfs=sysfs, proc=proc) == [
        "/dev/sdz3 is in use as swap",
        "/dev/sdz1 is held by /dev/md127",
        "/dev/sdz2 is held by /dev/dm-0",
        "/dev/sdz holds the running system (the file system at /)",
    ]
    assert usage_reasons(disks["sdy"], sysfs=sysfs, proc=proc) == [
        "/dev/sdy is mounted at /mnt/with space",
        "/dev/sdy is held by /dev/md0",
    ]
    assert usage_reasons(disks["sdx"], sysfs=sysfs, proc=proc) == []
    assert [p.path for p in partitions(disks["sdz"])] == ["/dev/sdz1", "/dev/sdz2", "/dev/sdz3"]
