"""`metal3 ramdisk build`: the Debian layer and the agent layer from the cache (or built), put
together into DIR/vmlinuz, DIR/initramfs.img (the two layers concatenated) and DIR/agent.iso,
with DIR/ramdisk.json saying what they hold (digests, sizes, kernel, packages, timings)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metal3.ramdisk import debian, iso, payload
from metal3.ramdisk.cache import Cache, digest, file_sha256
from metal3.ramdisk.tools import RamdiskError, require

log = logging.getLogger(__name__)

KERNEL = "vmlinuz"
INITRAMFS = "initramfs.img"
ISO = "agent.iso"
MANIFEST = "ramdisk.json"
DEFAULT_ISO_ARGS = "console=tty0 console=ttyS0,115200n8"


@dataclass(frozen=True)
class BuildOptions:
    output: Path
    cache_dir: Path
    source: Path | None = None  # a checkout to build the wheel from
    wheel: Path | None = None  # or this wheel
    mirror: str = debian.MIRROR
    suite: str = debian.SUITE
    iso: bool = True
    iso_kernel_args: str = DEFAULT_ISO_ARGS


@dataclass
class BuildResult:
    kernel: Path
    initramfs: Path
    iso: Path | None
    manifest: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)  # per step
    cached: dict[str, bool] = field(default_factory=dict)  # per layer


def default_source() -> Path | None:
    """The checkout this package runs from (an editable install), if it is one."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "rust").is_dir() else None


def build(options: BuildOptions) -> BuildResult:
    if os.geteuid() != 0:
        raise RamdiskError("building the ramdisk needs root (debootstrap, chroot, device nodes)")
    require("debootstrap", "chroot", "cpio", "zstd", "depmod", "modprobe", "dpkg-deb", "strip")
    if options.iso:
        require("xorriso")
    source = options.source or (None if options.wheel else default_source())
    if options.wheel is None and source is None:
        raise RamdiskError("not running from a checkout: give --source DIR or --wheel FILE")
    cache = Cache(options.cache_dir)
    seconds: dict[str, float] = {}
    cached: dict[str, bool] = {}
    with cache.locked(), tempfile.TemporaryDirectory(prefix="metal3-ramdisk-") as tmp:
        work = Path(tmp)
        start = time.monotonic()
        base, cached["debian"] = cache.fetch(
            "debian",
            debian.layer_key(options.mirror, options.suite),
            lambda folder: debian.build_layer(
                folder, mirror=options.mirror, suite=options.suite, workdir=work / "debian"
            ),
        )
        seconds["debian_layer"] = time.monotonic() - start

        start = time.monotonic()
        wheel = options.wheel
        if wheel is not None:
            key_input = file_sha256(wheel)
        else:
            assert source is not None
            key_input = payload.source_digest(source)
        checkout = source

        def agent_layer(folder: Path) -> dict[str, Any]:
            if wheel is not None:
                built = wheel
            else:
                assert checkout is not None
                built = payload.build_wheel(checkout, work / "wheel")
            return payload.build_layer(folder, wheel=built, workdir=work / "payload")

        agent, cached["agent"] = cache.fetch("agent", payload.layer_key(key_input), agent_layer)
        seconds["agent_layer"] = time.monotonic() - start

        start = time.monotonic()
        options.output.mkdir(parents=True, exist_ok=True)
        kernel = options.output / KERNEL
        initramfs = options.output / INITRAMFS
        _copy(base.path(debian.KERNEL_FILE), kernel)
        _concatenate([base.path(debian.LAYER_FILE), agent.path(payload.LAYER_FILE)], initramfs)
        iso_path: Path | None = None
        if options.iso:
            iso_key = digest(
                "iso", base.files[debian.LAYER_FILE], agent.files[payload.LAYER_FILE],
                base.files[debian.KERNEL_FILE], options.iso_kernel_args,
            )  # fmt: skip
            iso_entry, cached["iso"] = cache.fetch(
                "iso",
                iso_key,
                lambda folder: _make_iso(folder, kernel, initramfs, options, work),
            )
            iso_path = options.output / ISO
            _copy(iso_entry.path(ISO), iso_path)
        seconds["output"] = time.monotonic() - start
    manifest = {
        "kernel": {"file": KERNEL, "sha256": base.files[debian.KERNEL_FILE],
                   "bytes": kernel.stat().st_size, "version": base.meta["kernel_version"]},
        "initramfs": {"file": INITRAMFS, "sha256": file_sha256(initramfs),
                      "bytes": initramfs.stat().st_size,
                      "unpacked_bytes": base.meta["unpacked_bytes"] + agent.meta["unpacked_bytes"]},
        "iso": None if iso_path is None else {
            "file": ISO, "sha256": file_sha256(iso_path), "bytes": iso_path.stat().st_size,
            "kernel_args": options.iso_kernel_args},
        "debian": {k: base.meta[k] for k in ("suite", "mirror", "kernel_package", "packages")},
        "kernel_modules": base.meta["kernel_modules"],
        "agent": agent.meta,
        "cached": cached,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }  # fmt: skip
    (options.output / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return BuildResult(kernel, initramfs, iso_path, manifest, seconds, cached)


def _make_iso(
    folder: Path, kernel: Path, initramfs: Path, options: BuildOptions, work: Path
) -> dict[str, Any]:
    iso.make_iso(
        folder / ISO,
        kernel=kernel,
        initramfs=initramfs,
        kernel_args=options.iso_kernel_args,
        workdir=work,
    )
    return {"kernel_args": options.iso_kernel_args}


def _copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def _concatenate(parts: list[Path], target: Path) -> None:
    """The kernel unpacks concatenated compressed cpio archives one after the other."""
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    tmp.replace(target)


__all__ = ["BuildOptions", "BuildResult", "RamdiskError", "build"]
