"""The test OS image's root file system, as a folder: Debian with systemd, a kernel and cloud-init.

`debootstrap --variant=minbase` from a Debian mirror with the packages in `PACKAGES` (downloaded
packages are kept in a folder of the cache, and debootstrap checks each against the mirror's
signed index). The kernel is Debian's `linux-image-amd64`; of its modules only the drivers in
`MODULES` are kept, with what they depend on (read from `modules.dep`), so the initramfs
(`MODULES=most`) holds just those. Then `files` are written (cloud-init settings, the console
report, the serial getty, fstab) and documentation, locales, apt's lists and caches trimmed.
Needs root (debootstrap and chroot).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from metal3.lab.osimage import files
from metal3.lab.osimage.tools import OsImageError, run

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "systemd-sysv",
    "linux-image-amd64",
    "cloud-init",
    # debootstrap's resolver does not follow virtual packages: python3-cryptography (a
    # dependency of cloud-init) needs python3-cffi-backend-api-*, which this provides.
    "python3-cffi-backend",
    "zstd",  # the initramfs is zstd-compressed
    "openssh-client",  # ssh-keygen, which cloud-init's ssh module calls (no sshd is installed)
)
# The root's file system (ext4, with crc32c for its checksums), storage (virtio, SCSI, IDE,
# AHCI, NVMe), the config drive's file systems (ISO 9660 as Ironic writes it, vfat and UDF as
# other tools do), NICs of virtual machines, the virtio console and RNG, and what systemd
# loads at start (autofs4, and binfmt_misc behind its automount). Whatever else the kernel
# brings is removed.
MODULES = (
    "ext4",
    "autofs4",
    "binfmt_misc",
    "crc32c_generic",
    "crc32c-intel",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_console",
    "virtio-rng",
    "sd_mod",
    "sr_mod",
    "ata_piix",
    "ahci",
    "nvme",
    "isofs",
    "udf",
    "vfat",
    "nls_utf8",
    "nls_ascii",
    "nls_cp437",
    "e1000",
    "e1000e",
)
TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/lib/udev/hwdb.d",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf",
    "var/log",
)


def build_root(
    root: Path, *, debs: Path, root_uuid: str, mirror: str, suite: str
) -> dict[str, Any]:
    """Make the root file system in the (new) folder ``root``; what to record about it.

    ``debs`` keeps downloaded packages between builds; ``root_uuid`` is the ext4 file system's
    UUID (fstab and the boot menu name it).
    """
    debs.mkdir(parents=True, exist_ok=True)
    log.info("os-image: debootstrap %s from %s (one to two minutes)", suite, mirror)
    # INITRD=No: the kernel's postinst makes no initramfs yet (it would hold every module);
    # one is made below, once the modules are pruned.
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={debs}",
            f"--include={','.join(PACKAGES)}",
            suite,
            root,
            mirror,
        ],
        timeout=1800,
        env={**os.environ, "INITRD": "No"},
    )
    version = kernel_version(root)
    kept = prune_modules(root / "usr/lib/modules" / version, MODULES)
    run(["depmod", "-b", root, version])
    _configure(root, root_uuid, version)
    run(["chroot", root, "update-initramfs", "-c", "-k", version], timeout=600)
    packages = _package_versions(root)
    _trim(root)
    return {
        "suite": suite,
        "mirror": mirror,
        "kernel_version": version,
        "kernel_modules": kept,
        "packages": packages,
    }


def kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "usr/lib/modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise OsImageError(f"the root holds modules for {versions}, not for one kernel")
    return versions[0]


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def prune_modules(folder: Path, wanted: tuple[str, ...]) -> list[str]:
    """Delete every module under ``folder`` (lib/modules/VERSION) but ``wanted`` and what they
    depend on, by its ``modules.dep``; the module files kept (relative paths). A wanted module
    that is neither a module nor built in is an error: a misspelt name would go unnoticed."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (folder / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        if path:
            deps[path] = rest.split()
            by_name[_module_name(path)] = path
    builtin_file = folder / "modules.builtin"
    builtin = {
        _module_name(line)
        for line in (builtin_file.read_text().splitlines() if builtin_file.exists() else [])
    }
    keep: set[str] = set()
    todo: list[str] = []
    for name in wanted:
        key = name.replace("-", "_")
        if key in by_name:
            todo.append(by_name[key])
        elif key not in builtin:
            raise OsImageError(f"kernel module {name} is neither a module nor built in")
    while todo:
        path = todo.pop()
        if path not in keep:
            keep.add(path)
            todo.extend(deps.get(path, []))
    for path in deps:
        if path not in keep:
            (folder / path).unlink(missing_ok=True)
    for directory in sorted(folder.glob("kernel/**/"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    return sorted(keep)


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _link(root: Path, rel: str, target: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def _configure(root: Path, root_uuid: str, version: str) -> None:
    _write(root, "etc/cloud/cloud.cfg.d/99_metal3.cfg", files.CLOUD_CFG)
    _write(root, "usr/local/sbin/metal3-os-report", files.REPORT_SCRIPT, 0o755)
    _write(root, "etc/systemd/system/metal3-os-report.service", files.REPORT_UNIT)
    _link(
        root,
        "etc/systemd/system/multi-user.target.wants/metal3-os-report.service",
        "/etc/systemd/system/metal3-os-report.service",
    )
    # systemd starts a getty on the kernel's console anyway; this one does not depend on it.
    _link(
        root,
        "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service",
        "/lib/systemd/system/serial-getty@.service",
    )
    # No gettys on virtual terminals (tty1, and tty2-6 that getty-static starts without dbus):
    # the serial console is the only one, and under TCG every process started costs.
    (root / "etc/systemd/system/getty.target.wants/getty@tty1.service").unlink(missing_ok=True)
    _link(root, "etc/systemd/system/getty-static.service", "/dev/null")
    _write(root, "etc/initramfs-tools/conf.d/metal3", files.INITRAMFS_CONF)
    _write(root, "etc/fstab", files.fstab(root_uuid))
    _write(root, "etc/hostname", files.DEFAULT_HOSTNAME + "\n")
    _write(root, "etc/hosts", files.hosts(files.DEFAULT_HOSTNAME))
    # Each boot of a copy of the image is a new machine: systemd makes the id at first boot.
    _write(root, "etc/machine-id", "")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    _write(
        root,
        "boot/extlinux/extlinux.conf",
        files.extlinux_conf(f"vmlinuz-{version}", f"initrd.img-{version}", root_uuid),
    )


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
            path.mkdir()  # packages and tools expect these folders to exist
    (root / "var/log/apt").mkdir(parents=True, exist_ok=True)
    for pattern in ("var/cache/apt/*.bin", "boot/System.map-*", "usr/lib/udev/hwdb.bin"):
        for path in root.glob(pattern):
            path.unlink()
