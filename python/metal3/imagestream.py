"""One-pass streaming of disk images (raw, qcow2, gzip/xz/zstd raw) onto a disk.

A thin layer over the Rust extension ``metal3._native``: it adds the one rule callers must
not get wrong. A write whose checksum did not match raises `ChecksumMismatchError` (carrying the
result), so a returned `WriteResult` with ``verified`` true is the only "written and verified".

Errors the operating system gave for the target are `TargetIOError` (a `TargetError` and an
`OSError` with ``errno``): `TargetFullError` (ENOSPC, EDQUOT), `TargetDeviceError` (EIO, ENXIO,
ENODEV), `TargetPermissionError` (EACCES, EPERM, EROFS; also a `PermissionError`). Every
`TargetError` has ``retryable``, true only for a full target. `InternalError` is a bug (a
pipeline thread panicked), never a verdict on the image.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike

from metal3._native import (
    DEFAULT_MAX_BUFFER,
    CancelToken,
    ChecksumError,
    CorruptImageError,
    ImageInfo,
    ImageStreamError,
    InternalError,
    LayoutError,
    SourceError,
    TargetDeviceError,
    TargetError,
    TargetFullError,
    TargetIOError,
    TargetPermissionError,
    TruncatedImageError,
    UnsupportedImageError,
    WriteCancelledError,
    WriteResult,
)
from metal3._native import info as _info
from metal3._native import write as _write

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "CancelToken",
    "ChecksumError",
    "ChecksumMismatchError",
    "CorruptImageError",
    "ImageInfo",
    "ImageStreamError",
    "InternalError",
    "LayoutError",
    "ProgressCallback",
    "SourceError",
    "TargetDeviceError",
    "TargetError",
    "TargetFullError",
    "TargetIOError",
    "TargetPermissionError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "WriteCancelledError",
    "WriteResult",
    "info",
    "write",
]

ProgressCallback = Callable[[int, int, int | None], object]
"""Called with (bytes downloaded, bytes written, total download size or None)."""


class ChecksumMismatchError(ImageStreamError):
    """The image was written but its bytes do not match the expected checksum."""

    def __init__(self, result: WriteResult) -> None:
        self.result = result
        super().__init__(
            f"{result.checksum_algorithm} checksum mismatch: expected {result.expected_digest}, "
            f"got {result.digest}; the target holds an unverified image"
        )


def info(
    source: str,
    *,
    insecure: bool = False,
    ca_file: str | PathLike[str] | None = None,
    connect_timeout: float = 30.0,
    read_timeout: float = 60.0,
) -> ImageInfo:
    """Format, virtual size, cluster size and compression of SOURCE (a path or URL)."""
    return _info(
        source,
        insecure=insecure,
        ca_file=ca_file,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )


def write(
    source: str,
    target: str | PathLike[str],
    *,
    format: str = "auto",
    checksum: str | None = None,
    checksum_type: str = "auto",
    assume_zeroed: bool = False,
    insecure: bool = False,
    ca_file: str | PathLike[str] | None = None,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    connect_timeout: float = 30.0,
    read_timeout: float = 60.0,
    workers: int = 2,
    progress: ProgressCallback | None = None,
    progress_interval: float = 0.25,
    cancel: CancelToken | None = None,
) -> WriteResult:
    """Stream SOURCE onto TARGET (block device or file) in one pass; blocks, GIL released.

    ``checksum`` is a hex digest or the URL of a checksum file; ``checksum_type`` is md5,
    sha256, sha512 or auto. Raises `ChecksumMismatchError` when the digest differs, other
    `ImageStreamError` subclasses for everything else (`TargetIOError` and its subclasses, with
    ``errno``, when the target's I/O fails). ``verified`` on the result is true only when a
    checksum was given and matched.
    """
    result = _write(
        source,
        target,
        format=format,
        checksum=checksum,
        checksum_type=checksum_type,
        assume_zeroed=assume_zeroed,
        insecure=insecure,
        ca_file=ca_file,
        max_buffer=max_buffer,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        workers=workers,
        progress=progress,
        progress_interval=progress_interval,
        cancel=cancel,
    )
    if result.expected_digest is not None and not result.verified:
        raise ChecksumMismatchError(result)
    return result
