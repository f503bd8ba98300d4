"""Loop devices over files: real block devices for the tests and benchmarks.

Code that writes disks takes other paths on a block device than on a regular file (O_DIRECT,
zero-range, the size read from the device), so tests of disks run on loop devices. Nothing here
falls back to a plain file: when `losetup` is missing or refuses, `LoopDeviceError` says why.
`./dev test` and `./dev bench` prepare the machine first (the loop driver, /dev/loop-control,
/dev/loopN nodes). Every device attached here is detached when its `with` block ends, however
it ends; a failed detach is an error too, so leaked devices do not go unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


class LoopDeviceError(RuntimeError):
    """A loop device could not be attached, set up as asked, or detached."""


@dataclass(frozen=True)
class LoopDevice:
    path: Path
    backing: Path
    direct_io: bool

    @property
    def size(self) -> int:
        """The device's size in bytes, as the kernel reports it."""
        sectors = (_sysfs(self.path) / "size").read_text()
        return int(sectors) * 512


def _sysfs(dev: Path) -> Path:
    return Path("/sys/block") / dev.name


def _losetup() -> str:
    path = shutil.which("losetup")
    if path is None:
        raise LoopDeviceError("losetup (util-linux) is not installed: no loop devices can be made")
    return path


def make_backing(path: Path, size: int, fill: int | None = None) -> Path:
    """A file of `size` bytes: sparse (reads as zeros) or, with `fill`, that byte everywhere."""
    with path.open("wb") as f:
        if fill is None:
            f.truncate(size)
        else:
            block = bytes([fill]) * min(size, 4 * MiB)
            left = size
            while left > 0:
                left -= f.write(block[: min(left, len(block))])
    return path


@contextmanager
def attached(backing: Path, *, direct_io: bool = False) -> Iterator[LoopDevice]:
    """`backing` attached to a free loop device (`losetup --find --show`), detached on exit.

    With `direct_io` the device reads and writes its backing file with O_DIRECT, like a disk
    with no page cache in front; if the kernel does not turn that on, this fails.
    """
    losetup = _losetup()
    args = [losetup, "--find", "--show", *(["--direct-io=on"] if direct_io else []), str(backing)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise LoopDeviceError(
            f"cannot attach {backing} to a loop device: `{' '.join(args)}` exited "
            f"{done.returncode}: {done.stderr.strip()}. Loop devices need root, the loop driver, "
            "/dev/loop-control and /dev/loopN nodes (`./dev test` sets these up)"
        )
    dev = LoopDevice(Path(done.stdout.strip()), backing, direct_io)
    try:
        if direct_io:
            dio = (_sysfs(dev.path) / "loop" / "dio").read_text().strip()
            if dio != "1":
                raise LoopDeviceError(
                    f"{dev.path} over {backing} runs without direct I/O (the file system of "
                    "the backing file refuses O_DIRECT?)"
                )
        yield dev
    finally:
        # Partition nodes a test made (partx -a) outlive the detach and would appear on the next
        # device attached at this number: drop them first (nothing to drop is not an error).
        subprocess.run(["partx", "--delete", str(dev.path)], capture_output=True, timeout=60)
        detach = subprocess.run(
            [losetup, "--detach", str(dev.path)], capture_output=True, text=True, timeout=60
        )
        if detach.returncode != 0:
            raise LoopDeviceError(f"cannot detach {dev.path}: {detach.stderr.strip()}")


class LoopDevices:
    """Loop devices for one test, over backing files in `folder`; all detached by `close`."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._stack = ExitStack()
        self._count = 0

    def attach(self, backing: Path, *, direct_io: bool = False) -> LoopDevice:
        return self._stack.enter_context(attached(backing, direct_io=direct_io))

    def new(self, size: int, *, fill: int | None = None, direct_io: bool = False) -> LoopDevice:
        """A device of `size` bytes (a multiple of 512) over a new file: sparse, so reading
        zeros, or with `fill`, that byte everywhere."""
        if size <= 0 or size % 512:
            raise ValueError(f"a loop device's size is a positive multiple of 512, not {size}")
        self._count += 1
        backing = make_backing(self._folder / f"loop-backing-{self._count}", size, fill)
        return self.attach(backing, direct_io=direct_io)

    def close(self) -> None:
        self._stack.close()
