"""The ramdisk's Debian layer: a minimal Debian root, the kernel and the drivers it needs first.

`debootstrap --variant=minbase` from a Debian mirror, with python3 and the tools the agent calls
(those of an ironic-python-agent ramdisk: lsblk, sfdisk/sgdisk, wipefs, mdadm, ethtool,
dmidecode, ipmitool, udev; busybox for its DHCP client). The kernel is Debian's current
`linux-image-amd64`; of its ~400 MB of modules only the drivers named in `files/modules` are
kept, with everything they depend on (`modprobe --show-depends`) and a `modules.dep` made for
them. Documentation, locales, apt and perl are trimmed away; Python's standard library is
byte-compiled once more by the ramdisk's own python3 (one optimization level, unchecked-hash
.pyc files, valid whatever the files' times), because compiling it at every boot is slow
under emulation. Needs root (debootstrap and chroot).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from metal3.ramdisk.archive import pack
from metal3.ramdisk.cache import digest
from metal3.ramdisk.tools import RamdiskError, run

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
LAYER_VERSION = "3"  # changed whenever this module's output changes for the same inputs
KERNEL_METAPACKAGE = "linux-image-amd64"
LAYER_FILE = "base.cpio.zst"
KERNEL_FILE = "vmlinuz"
PACKAGES = (
    "python3",
    "kmod",
    "busybox",
    "iproute2",
    "udev",
    "fdisk",
    "gdisk",
    "ethtool",
    "dmidecode",
    "ipmitool",
    "mdadm",
)
# Removed after installation: nothing the agent or the init reads at run time.
TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/zoneinfo",
    "usr/share/misc",
    "usr/share/common-licenses",
    "usr/share/perl5",
    "usr/bin/perl",
    "usr/bin/perl5.36.0",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/udev/hwdb.bin",
    "usr/lib/udev/hwdb.d",
    "usr/lib/apt",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "etc/apt",
    "var/cache/apt",
    "var/cache/debconf",
    "var/lib/apt",
    "var/log",
    "var/lib/dpkg",  # the package versions are in ramdisk.json
    "usr/share/bash-completion",
)
# `python -m compileall` options for the ramdisk: what the interpreter loads by default only.
COMPILE_OPTIONS = ("-q", "-o", "0", "--invalidation-mode", "unchecked-hash")
TRIM_GLOBS = (
    "usr/bin/apt*",
    "usr/lib/x86_64-linux-gnu/libapt-*",
)


def modules_wanted() -> list[str]:
    """The drivers loaded at boot before udev runs (files/modules)."""
    text = resources.files("metal3.ramdisk").joinpath("files/modules").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def layer_key(mirror: str, suite: str) -> str:
    """What this layer depends on (the mirror's current packages aside: a new kernel or
    security update is picked up by clearing the cache)."""
    return digest(
        "debian-layer",
        LAYER_VERSION,
        mirror,
        suite,
        *PACKAGES,
        "modules",
        *modules_wanted(),
        "trim",
        *TRIM,
        *TRIM_GLOBS,
    )


def build_layer(folder: Path, *, mirror: str, suite: str, workdir: Path) -> dict[str, Any]:
    """Write `vmlinuz` and `base.cpio.zst` into ``folder``; what to record about them."""
    root = workdir / "root"
    log.info("ramdisk: debootstrap %s from %s (about a minute)", suite, mirror)
    try:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                suite,
                root,
                mirror,
            ],
            timeout=1800,
        )
        kernel = _kernel_package(root)
        log.info("ramdisk: kernel package %s", kernel)
        run(["chroot", root, "sh", "-c", f"cd /tmp && apt-get download -q {kernel}"])
        debs = sorted((root / "tmp").glob(f"{kernel}_*.deb"))
        if len(debs) != 1:
            raise RamdiskError(f"apt-get download {kernel} left {len(debs)} packages")
        unpacked = workdir / "kernel"
        run(["dpkg-deb", "-x", debs[0], unpacked])
        debs[0].unlink()
        versions = sorted(p.name for p in (unpacked / "lib/modules").iterdir())
        if len(versions) != 1:
            raise RamdiskError(f"{kernel} holds modules for {versions}, not one kernel")
        version = versions[0]
        shutil.copyfile(unpacked / f"boot/vmlinuz-{version}", folder / KERNEL_FILE)
        modules = _install_modules(unpacked, root, version)
        shutil.rmtree(unpacked)
        packages = _package_versions(root)
        _trim(root)
        run(
            ["chroot", root, "python3", "-m", "compileall", *COMPILE_OPTIONS, "/usr/lib/python3.11"]
        )
        metal3_etc = root / "etc/metal3"
        metal3_etc.mkdir(parents=True, exist_ok=True)
        (metal3_etc / "modules").write_text("\n".join(modules_wanted()) + "\n")
        unpacked_bytes = _tree_size(root)
        log.info("ramdisk: packing the Debian layer (%d MB unpacked)", unpacked_bytes >> 20)
        pack(root, folder / LAYER_FILE)
    finally:
        _unmount_under(workdir)
    return {
        "suite": suite,
        "mirror": mirror,
        "kernel_package": kernel,
        "kernel_version": version,
        "kernel_modules": modules,
        "packages": packages,
        "unpacked_bytes": unpacked_bytes,
    }


def _kernel_package(root: Path) -> str:
    """The versioned kernel package the metapackage points at in the new root's package lists."""
    out = run(["chroot", root, "apt-cache", "depends", KERNEL_METAPACKAGE])
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise RamdiskError(f"{KERNEL_METAPACKAGE} depends on no linux-image package: {out.strip()}")


def _install_modules(unpacked: Path, root: Path, version: str) -> list[str]:
    """Copy the wanted drivers and what they depend on; make modules.dep. The module files'
    paths (relative to lib/modules/VERSION) copied."""
    source = unpacked / "lib/modules" / version
    target = root / "usr/lib/modules" / version
    run(["depmod", "-b", unpacked, version])
    wanted: set[str] = set()
    for module in modules_wanted():
        out = run(["modprobe", "-d", unpacked, "-S", version, "--show-depends", module])
        for line in out.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "insmod":
                wanted.add(str(Path(words[1]).relative_to(source)))
    for rel in sorted(wanted):
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target / rel)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    run(["depmod", "-b", root, version])
    return sorted(wanted)


def _package_versions(root: Path) -> dict[str, str]:
    out = run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\n"]
    )
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _trim(root: Path) -> None:
    for rel in TRIM:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for pattern in TRIM_GLOBS:
        for path in root.glob(pattern):
            path.unlink()
    for cache in sorted(root.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    for dev in (root / "dev").iterdir():
        if dev.name != "console":  # the kernel opens it before /init runs (and mounts /dev)
            if dev.is_dir() and not dev.is_symlink():
                shutil.rmtree(dev)
            else:
                dev.unlink()


def _tree_size(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _unmount_under(folder: Path) -> None:
    """debootstrap mounts /proc (and maybe /sys) in the new root and unmounts them when it
    ends well; after a failure they could remain, and must go before the folder is removed."""
    prefix = str(folder.resolve()) + "/"
    with contextlib.suppress(OSError):
        points = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)
        ]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
