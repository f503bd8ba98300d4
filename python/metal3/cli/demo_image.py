"""The real demo's OS image, made here from scratch with the usual tools.

A GPT disk image with one Linux partition holding an ext4 file system of real files (made by
`mke2fs -d` from a folder this module writes: /etc/hostname, /etc/os-release, a README, and
some random bytes so the image is not all metadata), converted to qcow2 by `qemu-img convert`,
with a `SHA256SUMS` file as `sha256sum` writes it. The reference the demo compares disks
against is the image converted back by `qemu-img convert -O raw`: what any correct writer
puts on a disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
SECTOR = 512
DISK_SIZE = 64 * MiB  # the image's virtual size
RANDOM_BYTES = 16 * MiB  # incompressible content, so the image has real data to write
IMAGE_NAME = "metal3-demo-os.qcow2"
SUMS_NAME = "SHA256SUMS"
TOOLS = ("qemu-img", "sgdisk", "sfdisk", "mke2fs", "sha256sum")


class ImageBuildError(RuntimeError):
    """A tool failed while making the image; the message says which and why."""


@dataclass(frozen=True)
class DemoImage:
    path: Path  # the qcow2 file
    sums: Path  # SHA256SUMS, naming the qcow2 file
    sha256: str  # sha256sum's digest of the qcow2 file
    reference: Path  # `qemu-img convert -O raw` of the qcow2: the bytes a disk must hold
    virtual_size: int
    files: dict[str, bytes]  # the small files of its file system, by path

    @property
    def name(self) -> str:
        return self.path.name


def _run(*args: str | Path) -> str:
    try:
        done = subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError:
        raise ImageBuildError(
            f"{args[0]} is not installed (the demo makes its image with it)"
        ) from None
    if done.returncode != 0:
        raise ImageBuildError(f"{' '.join(map(str, args))}: {done.stderr.strip()[-1000:]}")
    return done.stdout


def image_files() -> dict[str, bytes]:
    return {
        "etc/hostname": b"metal3-demo\n",
        "etc/os-release": (
            b'NAME="metal3 demo OS"\nID=metal3-demo\nPRETTY_NAME="metal3 demo OS (an image '
            b'made by metal3 demo)"\n'
        ),
        "README": (
            b"This file system was made by `metal3 demo` with mke2fs -d, in a GPT disk image\n"
            b"converted to qcow2 by qemu-img, then written to each lab host's disk by the\n"
            b"metal3 agent.\n"
        ),
    }


def build_demo_image(folder: Path) -> DemoImage:
    """Make the image, its checksum file and its raw reference in `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    tree = folder / "tree"
    files = image_files()
    for rel, content in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(content)
    (tree / "var/lib/demo").mkdir(parents=True)
    (tree / "var/lib/demo/random.bin").write_bytes(os.urandom(RANDOM_BYTES))

    raw = folder / "disk.raw"
    with raw.open("wb") as handle:
        handle.truncate(DISK_SIZE)
    _run("sgdisk", "-n1:2048:+60M", "-t1:8300", "-c1:root", raw)
    partition = _partition(raw)
    fs = folder / "root.ext4"
    with fs.open("wb") as handle:
        handle.truncate(partition[1] * SECTOR)
    _run("mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-d", tree, fs)
    with raw.open("r+b") as out, fs.open("rb") as src:
        out.seek(partition[0] * SECTOR)
        shutil.copyfileobj(src, out, MiB)
    image = folder / IMAGE_NAME
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, image)
    reference = folder / "reference.raw"
    _run("qemu-img", "convert", "-O", "raw", image, reference)
    sums = folder / SUMS_NAME
    line = _sha256sum(image)
    sums.write_text(line)
    raw.unlink()
    fs.unlink()
    shutil.rmtree(tree)
    return DemoImage(
        path=image,
        sums=sums,
        sha256=line.split()[0],
        reference=reference,
        virtual_size=reference.stat().st_size,
        files=files,
    )


def _sha256sum(image: Path) -> str:
    """`sha256sum NAME` run in the image's folder: its line names the file as served."""
    try:
        done = subprocess.run(
            ["sha256sum", image.name],
            cwd=image.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except FileNotFoundError:
        raise ImageBuildError("sha256sum is not installed") from None
    if done.returncode != 0:
        raise ImageBuildError(f"sha256sum {image.name}: {done.stderr.strip()}")
    return done.stdout


def _partition(raw: Path) -> tuple[int, int]:
    """(start, sectors) of the image's one partition, as sfdisk reads them."""
    table = json.loads(_run("sfdisk", "--json", raw))["partitiontable"]
    (entry,) = table["partitions"]
    return int(entry["start"]), int(entry["size"])
