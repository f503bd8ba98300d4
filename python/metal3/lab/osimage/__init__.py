"""The test OS image: a small Debian that boots from disk and lets cloud-init apply a config drive.

`metal3 lab os-image --output FILE` writes it (`build_os_image`): a zstd-compressed qcow2 made
from Debian bookworm packages (no cloud image is downloaded) with

- Debian's `linux-image-amd64` kernel (drivers kept: virtio blk/scsi/net, IDE, AHCI, NVMe, the
  ISO 9660/vfat/UDF file systems), an initramfs, systemd;
- extlinux on an MBR disk (BIOS boot; no ESP): one bootable ext4 partition, the rest of a
  larger disk left free for the config drive partition the agent adds;
- cloud-init 22.4 whose datasource list is ``[ConfigDrive, None]`` (network configuration,
  growpart and resizefs off; default user ``debian``, locked, getting meta_data's public keys);
- the kernel console and a getty on the first serial port (``console=ttyS0,115200n8``).

What a test reads from the serial console, once cloud-init is done:

- the user data's own output: a ``#cloud-config`` with ``runcmd: [echo MARKER]`` (or a script)
  prints MARKER there, since cloud-init's stages write to the console;
- one line from the image's `metal3-os-report` service, which waits for cloud-init to finish
  (its ``/run/cloud-init/result.json``; at once when cloud-init is disabled) and prints
  ``metal3-os-image: key=value ...`` with ``status`` (done, error, disabled), ``datasource``
  (ConfigDrive, None or -), ``source`` (the config drive's device), ``hostname`` (the one
  cloud-init set from meta_data, else ``metal3-os``), ``instance-id`` (meta_data's uuid),
  ``user-data-sha256`` (of the user data cloud-init read, - without), ``ssh-keys`` (keys
  installed for the default user), ``errors`` (cloud-init's error count) and ``uptime``
  (seconds since the kernel started).
  `read_report` parses it.

Without a config drive cloud-init falls back to its None datasource: the line says
``status=done datasource=None hostname=metal3-os user-data-sha256=-``, and no user-data marker
appears.

The image is cached by content (`build`): the second build is a digest check and a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from metal3.lab.osimage.build import OsImage, build_os_image, cache_key
from metal3.lab.osimage.files import REPORT_PREFIX
from metal3.lab.osimage.tools import OsImageError
from metal3.ramdisk.cache import default_cache_dir

__all__ = [
    "REPORT_PREFIX",
    "OsImage",
    "OsImageError",
    "OsReport",
    "build_os_image",
    "cache_key",
    "default_cache_dir",
    "read_report",
]


@dataclass(frozen=True)
class OsReport:
    """The image's console report line, parsed (values as printed; "-" for none)."""

    fields: dict[str, str]

    def get(self, key: str) -> str:
        return self.fields.get(key, "-")

    @property
    def status(self) -> str:
        return self.get("status")

    @property
    def datasource(self) -> str:
        return self.get("datasource")

    @property
    def hostname(self) -> str:
        return self.get("hostname")

    @property
    def user_data_sha256(self) -> str:
        return self.get("user-data-sha256")


def read_report(console: str) -> OsReport | None:
    """The last report line in ``console`` (a serial console log), or None when there is none
    yet. Tolerates carriage returns and text before the prefix on the same line."""
    found: OsReport | None = None
    for line in console.replace("\r", "\n").splitlines():
        _, prefix, rest = line.partition(REPORT_PREFIX)
        if not prefix:
            continue
        pairs = (word.partition("=") for word in rest.split())
        found = OsReport({k: v for k, sep, v in pairs if sep})
    return found
