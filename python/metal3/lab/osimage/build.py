"""Building the test OS image once per set of inputs: the cache, and the steps in order.

The image is kept under ``CACHE/os-image/KEY/`` (``image.qcow2`` and ``manifest.json`` with its
sha256). KEY is a digest of every input: the mirror, the suite, the package and module lists,
and the source of the build's modules (which hold the files written into the image), so any
change to them builds anew. An entry is used only once the image matches its recorded sha256;
one that does not is removed and built again. A build works in a temporary folder of the
cache and renames its result into place; a lock file keeps two builders from building at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metal3.lab.osimage import disk, files, rootfs
from metal3.lab.osimage.tools import OsImageError, require, run
from metal3.ramdisk.cache import default_cache_dir, digest, file_sha256

log = logging.getLogger(__name__)

IMAGE = "image.qcow2"
MANIFEST = "manifest.json"
KEEP = 2  # older images are removed when a new one is made
TOOLS = (
    "debootstrap",
    "chroot",
    "depmod",
    "sfdisk",
    "mkfs.ext4",
    "losetup",
    "partx",
    "mount",
    "umount",
    "extlinux",
    "qemu-img",
)


@dataclass(frozen=True)
class OsImage:
    """A built image: where it is, what it is, and whether it came from the cache."""

    path: Path
    sha256: str
    file_size: int
    virtual_size: int
    from_cache: bool
    seconds: float  # this call, including a build
    key: str
    meta: dict[str, Any] = field(default_factory=dict)  # packages, kernel, build step times

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "file_size": self.file_size,
            "virtual_size": self.virtual_size,
            "from_cache": self.from_cache,
            "seconds": round(self.seconds, 3),
            "key": self.key,
            "kernel_version": self.meta.get("kernel_version"),
            "build_seconds": self.meta.get("seconds"),
        }


def cache_key(*, mirror: str = rootfs.MIRROR, suite: str = rootfs.SUITE) -> str:
    """The digest of everything the image is made from (the mirror's current packages aside:
    a new kernel or security update is picked up by clearing the cache)."""
    parts: list[str | bytes] = ["metal3-os-image", mirror, suite]
    parts += [*rootfs.PACKAGES, "|", *rootfs.MODULES, "|", *rootfs.TRIM, "|", *files.all_texts()]
    for source in (rootfs.__file__, disk.__file__, files.__file__, __file__):
        parts.append(Path(source or "").read_bytes())
    return digest(*parts)


def cached(cache_dir: Path, key: str) -> tuple[Path, dict[str, Any]] | None:
    """The cached image for ``key`` and its manifest, if present and matching its digest;
    an entry that does not match is removed."""
    folder = cache_dir / "os-image" / key
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        want = str(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        if folder.exists():
            log.warning("os-image cache: %s has no readable manifest; building again", folder)
            shutil.rmtree(folder, ignore_errors=True)
        return None
    try:
        got = file_sha256(folder / IMAGE)
    except OSError:
        got = ""
    if got != want:
        log.warning("os-image cache: %s does not match its sha256; building again", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    os.utime(folder)  # recently used: kept by `_prune`
    return folder / IMAGE, dict(manifest)


def build_os_image(
    output: Path | None = None,
    *,
    cache_dir: Path | None = None,
    mirror: str = rootfs.MIRROR,
    suite: str = rootfs.SUITE,
) -> OsImage:
    """The test OS image, from the cache or built now (root needed then), copied to ``output``
    when given (else ``path`` is the cached file, which must not be changed)."""
    started = time.monotonic()
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(mirror=mirror, suite=suite)
    base = cache_dir / "os-image"
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / ".lock"):
        hit = cached(cache_dir, key)
        from_cache = hit is not None
        if hit is None:
            require(*TOOLS)
            if os.geteuid() != 0:
                raise OsImageError("building the OS image needs root (debootstrap, loop devices)")
            hit = _build(base, key, mirror=mirror, suite=suite)
        image, manifest = hit
        path = image
        if output is not None:
            path = output
            tmp = output.with_name(f".{output.name}.tmp")
            shutil.copyfile(image, tmp)
            tmp.rename(output)
    return OsImage(
        path=path,
        sha256=str(manifest["sha256"]),
        file_size=int(manifest["file_size"]),
        virtual_size=int(manifest["virtual_size"]),
        from_cache=from_cache,
        seconds=time.monotonic() - started,
        key=key,
        meta=dict(manifest.get("meta") or {}),
    )


def _build(base: Path, key: str, *, mirror: str, suite: str) -> tuple[Path, dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
    try:
        seconds: dict[str, float] = {}
        t = time.monotonic()
        root_uuid = str(uuid.uuid4())
        meta = rootfs.build_root(
            work / "root", debs=base / "debs", root_uuid=root_uuid, mirror=mirror, suite=suite
        )
        seconds["root"] = time.monotonic() - t
        t = time.monotonic()
        log.info("os-image: making the disk")
        raw_size = disk.make_raw_disk(work / "root", work / "disk.raw", root_uuid)
        seconds["disk"] = time.monotonic() - t
        t = time.monotonic()
        sizes = disk.to_qcow2(work / "disk.raw", work / IMAGE)
        seconds["qcow2"] = time.monotonic() - t
        meta.update({"root_uuid": root_uuid, "raw_size": raw_size, "seconds": seconds})
        manifest = {"sha256": file_sha256(work / IMAGE), **sizes, "meta": meta}
        final = base / key
        final.mkdir()
        (work / IMAGE).rename(final / IMAGE)
        (final / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    finally:
        _remove_work(work)
    _prune(base)
    log.info("os-image: built in %.0f s (%s)", sum(seconds.values()), final / IMAGE)
    return final / IMAGE, manifest


def _remove_work(work: Path) -> None:
    """Remove the build folder, once nothing is mounted under it (a failed debootstrap can
    leave its /proc or /sys mounted: removing files there would be removing the machine's)."""
    prefix = str(work.resolve()) + "/"
    mounts = [
        line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if line.split()
    ]
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        run(["umount", "--lazy", point], check=False)
    still = [m for m in Path("/proc/mounts").read_text().split() if m.startswith(prefix)]
    if still:
        log.error("os-image: %s still has mounts (%s); left in place", work, ", ".join(still))
        return
    shutil.rmtree(work, ignore_errors=True)


def _prune(base: Path) -> None:
    entries = sorted(
        (p for p in base.iterdir() if p.is_dir() and (p / MANIFEST).exists()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Only one builder at a time in this cache."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
