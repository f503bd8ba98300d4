"""Typed interface of the Rust extension built from ``rust/native``.

Image streaming (``rust/imagestream``; ``metal3.imagestream`` is its API) and the inventory
converter (``rust/inventory``; ``metal3.inspection`` is its API).
"""

from collections.abc import Callable
from os import PathLike
from typing import Any, ClassVar, final

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "CancelToken",
    "ChecksumError",
    "CorruptImageError",
    "ImageInfo",
    "ImageStreamError",
    "InternalError",
    "InventoryError",
    "LayoutError",
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
    "__version__",
    "hardware_details_from_document",
    "hardware_details_from_json",
    "info",
    "write",
]

__version__: str
DEFAULT_MAX_BUFFER: int

class ImageStreamError(Exception): ...
class SourceError(ImageStreamError): ...
class TruncatedImageError(ImageStreamError): ...
class CorruptImageError(ImageStreamError): ...
class UnsupportedImageError(ImageStreamError): ...

class TargetError(ImageStreamError):
    retryable: ClassVar[bool]

class TargetIOError(TargetError, OSError): ...
class TargetFullError(TargetIOError): ...
class TargetDeviceError(TargetIOError): ...
class TargetPermissionError(TargetIOError, PermissionError): ...
class ChecksumError(ImageStreamError): ...
class LayoutError(ImageStreamError): ...
class WriteCancelledError(ImageStreamError): ...
class InternalError(ImageStreamError): ...

@final
class CancelToken:
    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

@final
class WriteResult:
    @property
    def format(self) -> str: ...
    @property
    def inner_format(self) -> str: ...
    @property
    def virtual_size(self) -> int: ...
    @property
    def bytes_read(self) -> int: ...
    @property
    def bytes_written(self) -> int: ...
    @property
    def checksum_algorithm(self) -> str | None: ...
    @property
    def digest(self) -> str | None: ...
    @property
    def expected_digest(self) -> str | None: ...
    @property
    def verified(self) -> bool: ...
    @property
    def range_requests(self) -> int: ...
    @property
    def peak_buffered(self) -> int: ...

@final
class ImageInfo:
    @property
    def format(self) -> str: ...
    @property
    def inner_format(self) -> str | None: ...
    @property
    def virtual_size(self) -> int | None: ...
    @property
    def cluster_size(self) -> int | None: ...
    @property
    def compression(self) -> str | None: ...
    @property
    def file_size(self) -> int | None: ...
    @property
    def qcow2_version(self) -> int | None: ...
    @property
    def extended_l2(self) -> bool: ...

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
    max_buffer: int = ...,
    connect_timeout: float = 30.0,
    read_timeout: float = 60.0,
    workers: int = 2,
    progress: Callable[[int, int, int | None], object] | None = None,
    progress_interval: float = 0.25,
    cancel: CancelToken | None = None,
) -> WriteResult: ...
def info(
    source: str,
    *,
    insecure: bool = False,
    ca_file: str | PathLike[str] | None = None,
    connect_timeout: float = 30.0,
    read_timeout: float = 60.0,
) -> ImageInfo: ...

# --- inventories ----------------------------------------------------------------------------

class InventoryError(ValueError):
    path: str
    message: str

def hardware_details_from_json(raw: bytes | str) -> dict[str, Any]: ...
def hardware_details_from_document(document: object) -> dict[str, Any]: ...
