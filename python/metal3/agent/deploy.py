"""Deploy: write an image onto a disk in one verified pass, then its config drive, then sync.

The order makes every failure safe. What can be refused without touching the disk is refused
first: a request with no checksum, config drive data that cannot be written, a disk that is
in use or too small, an image that cannot be fetched or read. Then `metal3.imagestream`
streams the image onto the disk and verifies it on the way; then a GPT's backup header is
moved to the end of the disk and the config drive goes into its partition
(`metal3.agent.partitions`, `metal3.agent.configdrive`); then the disk is synced and the
kernel told about the new table.

A failure from the moment the image write is started (a checksum mismatch, a download that
breaks, a checksum file that cannot be fetched, an I/O error, no room for the config drive)
leaves the disk unbootable: its first MiB, the last MiB of the image and of the disk, and the
GPT backup header the primary header names are zeroed, so neither the BIOS nor UEFI firmware
(which would rebuild a GPT from its backup) finds a half-written or unverified image that
looks good. Each `DeployError` says whether that was done (``disk_wiped``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from metal3 import imagestream
from metal3.agent.blockdev import ToolError, ensure_not_in_use, find_disk, run_tool, size_bytes
from metal3.agent.configdrive import (
    ConfigDriveError,
    HostIdentity,
    build_config_drive,
    meta_data_with_defaults,
)
from metal3.agent.errors import AgentError
from metal3.agent.partitions import (
    CONFIG_DRIVE_SIZE,
    ConfigDrivePartition,
    PartitionTableError,
    move_gpt_backup_to_end,
    prepare_config_drive_partition,
)

__all__ = [
    "ConfigDriveWriteError",
    "DeployError",
    "DeployRequest",
    "DeployResult",
    "DiskError",
    "HostIdentity",
    "ImageChecksumMismatchError",
    "ImageFetchError",
    "ImageFormatError",
    "InvalidDeployRequestError",
    "deploy",
]

log = logging.getLogger(__name__)

MiB = 1 << 20
_GPT_SIGNATURE = b"EFI PART"


class DeployError(AgentError):
    """A deploy failed; ``disk_wiped`` is true when the disk was made unbootable after it."""

    def __init__(self, message: str, *, disk_wiped: bool = False) -> None:
        super().__init__(message)
        self.disk_wiped = disk_wiped


class InvalidDeployRequestError(DeployError):
    """The request cannot be carried out as given (no checksum, bad config drive data)."""


class ImageFetchError(DeployError):
    """The image or its checksum file could not be downloaded completely."""


class ImageFormatError(DeployError):
    """The image is damaged or uses something the writer refuses."""


class ImageChecksumMismatchError(DeployError):
    """The image's bytes do not match the expected checksum."""


class DiskError(DeployError):
    """The disk is not usable (in use, too small, not a disk) or failed while written."""


class ConfigDriveWriteError(DeployError):
    """The image was written but its partition table could not take the config drive (no
    table, no room) or be fixed up (a tool failed)."""


@dataclass(frozen=True, kw_only=True)
class DeployRequest:
    """What to deploy where. Config drive data is optional: with none of `user_data`,
    `network_data` and `meta_data` no config drive is written (and an image without a
    partition table is fine)."""

    image_url: str
    checksum: str  # a hex digest or the URL of a checksum file
    disk: str
    checksum_type: str | None = None  # md5, sha256, sha512; None or "auto" to infer
    image_format: str | None = None  # None or "auto" to detect
    user_data: bytes | None = field(default=None, repr=False)  # may hold secrets
    network_data: Mapping[str, Any] | None = None
    meta_data: Mapping[str, Any] | None = None
    host: HostIdentity | None = None
    ca_file: str | None = None
    insecure: bool = False

    @property
    def wants_config_drive(self) -> bool:
        return any(d is not None for d in (self.user_data, self.network_data, self.meta_data))


@dataclass(frozen=True)
class DeployResult:
    """A verified deploy. `timings` are seconds: ``write_verify`` (download, verify and
    write, one pass), ``configdrive`` (build it, fix up the table and write it; without a
    config drive, the table's fix-up alone), ``sync``, ``total``."""

    disk: str
    image_format: str
    image_size: int
    image_bytes_written: int
    checksum_algorithm: str | None
    digest: str | None
    verified: bool
    configdrive_partition: ConfigDrivePartition | None
    timings: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "disk": self.disk,
            "image_format": self.image_format,
            "image_size": self.image_size,
            "image_bytes_written": self.image_bytes_written,
            "checksum_algorithm": self.checksum_algorithm,
            "digest": self.digest,
            "verified": self.verified,
            "configdrive_partition": (
                self.configdrive_partition.to_json() if self.configdrive_partition else None
            ),
            "timings": dict(self.timings),
        }


def shown_url(url: str) -> str:
    """A URL as messages may show it: without user and password, query or fragment (a
    pre-signed URL's signature is a credential too)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def deploy(
    request: DeployRequest, *, progress: imagestream.ProgressCallback | None = None
) -> DeployResult:
    """Write `request`'s image and config drive onto its disk; see the module docstring.

    Blocks until done. `progress` is handed to `metal3.imagestream.write`. Raises a
    `DeployError` subclass on failure.
    """
    started = time.perf_counter()
    if not request.checksum or not request.checksum.strip():
        raise InvalidDeployRequestError("a deploy needs the image's checksum (or its URL)")
    if not request.image_url:
        raise InvalidDeployRequestError("a deploy needs the image's URL")

    configdrive_seconds = 0.0
    iso: bytes | None = None
    if request.wants_config_drive:
        t = time.perf_counter()
        try:
            iso = build_config_drive(
                meta_data=meta_data_with_defaults(request.host, request.meta_data),
                user_data=request.user_data,
                network_data=request.network_data,
            )
        except ConfigDriveError as exc:
            raise InvalidDeployRequestError(f"config drive: {exc}") from exc
        configdrive_seconds += time.perf_counter() - t

    try:
        disk = find_disk(request.disk)
        ensure_not_in_use(disk)
        disk_size = size_bytes(disk)
    except AgentError as exc:
        raise DiskError(str(exc)) from exc

    t = time.perf_counter()
    image_size = _check_image(request, disk.path, disk_size, config_drive=iso is not None)
    try:
        written = imagestream.write(
            request.image_url,
            disk.path,
            format=request.image_format or "auto",
            checksum=request.checksum,
            checksum_type=request.checksum_type or "auto",
            insecure=request.insecure,
            ca_file=request.ca_file,
            progress=progress,
        )
    except imagestream.ChecksumMismatchError as exc:
        size = exc.result.virtual_size or image_size
        raise _failed(ImageChecksumMismatchError, str(exc), disk.path, disk_size, size) from exc
    except (ValueError, imagestream.ChecksumError) as exc:
        # Both are raised from the arguments, before anything is written.
        raise InvalidDeployRequestError(f"{shown_url(request.image_url)}: {exc}") from exc
    except imagestream.ImageStreamError as exc:
        kind = _error_kind(exc)
        raise _failed(
            kind, f"{shown_url(request.image_url)}: {exc}", disk.path, disk_size, image_size
        ) from exc
    write_seconds = time.perf_counter() - t
    image_size = written.virtual_size

    partition: ConfigDrivePartition | None = None
    t = time.perf_counter()
    try:
        if iso is not None:
            partition = prepare_config_drive_partition(disk.path)
            _write_config_drive(disk.path, partition, iso)
        else:
            move_gpt_backup_to_end(disk.path)
    except (PartitionTableError, ToolError, OSError) as exc:
        what = "config drive" if iso is not None else "partition table"
        raise _failed(
            ConfigDriveWriteError, f"{what}: {exc}", disk.path, disk_size, image_size
        ) from exc
    configdrive_seconds += time.perf_counter() - t

    t = time.perf_counter()
    try:
        _sync(disk.path)
    except OSError as exc:
        raise _failed(
            DiskError, f"syncing {disk.path} failed: {exc}", disk.path, disk_size, image_size
        ) from exc
    _tell_kernel(disk.path)
    sync_seconds = time.perf_counter() - t

    return DeployResult(
        disk=disk.path,
        image_format=written.format,
        image_size=image_size,
        image_bytes_written=written.bytes_written,
        checksum_algorithm=written.checksum_algorithm,
        digest=written.digest,
        verified=written.verified,
        configdrive_partition=partition,
        timings={
            "write_verify": write_seconds,
            "configdrive": configdrive_seconds,
            "sync": sync_seconds,
            "total": time.perf_counter() - started,
        },
    )


def _check_image(request: DeployRequest, disk: str, disk_size: int, *, config_drive: bool) -> int:
    """The image's virtual size (0 when the source does not tell it, as for compressed raw
    images), read from the source before the disk is touched; a source that cannot be read,
    or an image too large for the disk (with the config drive), is refused here."""
    try:
        info = imagestream.info(
            request.image_url, insecure=request.insecure, ca_file=request.ca_file
        )
    except ValueError as exc:
        raise InvalidDeployRequestError(f"{shown_url(request.image_url)}: {exc}") from exc
    except imagestream.ImageStreamError as exc:
        raise _error_kind(exc)(f"{shown_url(request.image_url)}: {exc}") from exc
    size = info.virtual_size or 0
    # The config drive partition starts on a MiB boundary after the image's last partition
    # and a GPT needs its backup after it: one MiB more covers both.
    need = size + (CONFIG_DRIVE_SIZE + MiB if config_drive else 0)
    if need > disk_size:
        drive = f" and a {CONFIG_DRIVE_SIZE >> 20} MiB config drive partition"
        with_drive = drive if config_drive else ""
        raise DiskError(
            f"{disk} ({disk_size} bytes) is too small for the image ({size} bytes){with_drive}"
        )
    return size


def _error_kind(exc: imagestream.ImageStreamError) -> type[DeployError]:
    if isinstance(exc, imagestream.TargetError):
        return DiskError
    if isinstance(exc, imagestream.SourceError | imagestream.TruncatedImageError):
        return ImageFetchError
    if isinstance(exc, imagestream.LayoutError):
        return ImageFetchError  # the source cannot serve the ranges this layout needs
    if isinstance(exc, imagestream.CorruptImageError | imagestream.UnsupportedImageError):
        return ImageFormatError
    if isinstance(exc, imagestream.ChecksumError):
        return InvalidDeployRequestError
    return DeployError


def _failed(
    kind: type[DeployError], message: str, disk: str, disk_size: int, image_size: int
) -> DeployError:
    """`kind` for a failure after the write began, with the disk made unbootable first."""
    try:
        _make_unbootable(disk, disk_size, image_size)
    except OSError as exc:
        log.error("deploy to %s failed and zeroing its boot areas failed too: %s", disk, exc)
        return kind(
            f"{message}; zeroing the disk's boot areas failed too ({exc}): it may still boot "
            "an unverified image",
            disk_wiped=False,
        )
    return kind(
        f"{message}; the disk's first MiB and GPT areas were zeroed so it does not boot",
        disk_wiped=True,
    )


def _make_unbootable(disk: str, disk_size: int, image_size: int) -> None:
    """Zero the first MiB of `disk` (MBR, primary GPT, boot code), the MiB before the GPT
    backup header the primary header names, and the last MiB of the image and of the disk
    (where backup headers sit)."""
    fd = os.open(disk, os.O_RDWR | os.O_CLOEXEC)
    try:
        ends = [MiB, disk_size]
        if image_size:
            ends.append(image_size)
        head = os.pread(fd, 2 * 4096, 0)
        for sector in (512, 4096):  # the primary header is in LBA 1, whatever a sector is
            header = head[sector : sector + 40]
            if header[:8] == _GPT_SIGNATURE:
                backup_lba = int.from_bytes(header[32:40], "little")
                ends.append((backup_lba + 1) * sector)
        zeros = bytes(MiB)
        for end in sorted(set(ends)):
            end = min(end, disk_size)
            start = max(0, end - MiB)
            if end > start:
                _pwrite_all(fd, zeros[: end - start], start)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_config_drive(disk: str, partition: ConfigDrivePartition, iso: bytes) -> None:
    """The config drive image at the partition's place on `disk`, zeros after it (up to the
    config drive size) so no older signature in the partition outlives it."""
    if len(iso) > partition.size:
        raise PartitionTableError(
            f"the config drive ({len(iso)} bytes) does not fit in partition {partition.number} "
            f"({partition.size} bytes)"
        )
    fd = os.open(disk, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _pwrite_all(fd, iso, partition.offset)
        pad = min(partition.size, CONFIG_DRIVE_SIZE) - len(iso)
        zeros = bytes(min(pad, 4 * MiB))
        at = partition.offset + len(iso)
        while pad > 0:
            n = min(pad, len(zeros))
            _pwrite_all(fd, zeros[:n], at)
            at += n
            pad -= n
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _sync(disk: str) -> None:
    fd = os.open(disk, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tell_kernel(disk: str) -> None:
    """Have the kernel re-read the table (``partx -u``), so the new partitions get nodes.

    Only a convenience for whoever looks at the disk before the host reboots: the disk already
    holds everything, so a failure here is logged, not raised.
    """
    try:
        run_tool(["partx", "--update", disk])
    except ToolError as exc:
        log.warning("the kernel's view of %s's partitions may be stale: %s", disk, exc)
