"""The agent ISO for virtual media: the kernel and initramfs behind ISOLINUX, BIOS-bootable
from a CD (El Torito) or a disk (isohybrid MBR). Made in user space by xorriso: nothing is
mounted, no iso9660 or vfat driver is needed on the build machine."""

from __future__ import annotations

import shutil
from pathlib import Path

from metal3.ramdisk.tools import RamdiskError, run

ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
ISOHYBRID_MBR = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
VOLUME_ID = "METAL3_AGENT"
MAX_APPEND = 1000  # ISOLINUX reads config lines of up to about a kilobyte


def isolinux_config(kernel_args: str) -> str:
    if "\n" in kernel_args or len(kernel_args) > MAX_APPEND:
        raise RamdiskError(
            f"kernel arguments for the ISO must be one line of at most {MAX_APPEND} characters"
        )
    return (
        "DEFAULT agent\nPROMPT 0\nTIMEOUT 0\n"
        "LABEL agent\n  KERNEL /boot/vmlinuz\n  INITRD /boot/initramfs.img\n"
        f"  APPEND {kernel_args}\n"
    )


def make_iso(
    output: Path, *, kernel: Path, initramfs: Path, kernel_args: str, workdir: Path
) -> None:
    """Write the ISO booting ``kernel`` + ``initramfs`` with ``kernel_args`` to ``output``."""
    for needed in (ISOLINUX_BIN, ISOHYBRID_MBR, LDLINUX):
        if not needed.exists():
            raise RamdiskError(f"{needed} is missing (Debian packages isolinux, syslinux-common)")
    tree = workdir / "iso"
    (tree / "boot").mkdir(parents=True)
    (tree / "isolinux").mkdir()
    shutil.copyfile(kernel, tree / "boot/vmlinuz")
    shutil.copyfile(initramfs, tree / "boot/initramfs.img")
    shutil.copyfile(ISOLINUX_BIN, tree / "isolinux/isolinux.bin")
    shutil.copyfile(LDLINUX, tree / "isolinux/ldlinux.c32")
    (tree / "isolinux/isolinux.cfg").write_text(isolinux_config(kernel_args))
    run(
        [
            "xorriso",
            "-as",
            "mkisofs",
            "-quiet",
            "-o",
            output,
            "-V",
            VOLUME_ID,
            "-R",
            "-J",
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "-isohybrid-mbr",
            ISOHYBRID_MBR,
            tree,
        ]
    )
    shutil.rmtree(tree)
