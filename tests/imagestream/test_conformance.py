"""The target must be byte-identical to `qemu-img convert -O raw` for every supported variant,
from a file and over HTTP, with one GET for layouts as `qemu-img convert` writes them."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagestream_support import ImageSet, Server, sha256_file

from metal3 import imagestream

VARIANTS = [
    "raw",
    "raw-gz",
    "raw-xz",
    "raw-zst",
    "qcow2-v2",
    "qcow2-v3",
    "qcow2-512",
    "qcow2-2m",
    "qcow2-zlib",
    "qcow2-zlib-v2",
    "qcow2-zstd",
    "qcow2-zlib-2m",
    "qcow2-zstd-512",
    "qcow2-extl2",
    "qcow2-prealloc",
    "qcow2-unordered",
    "qcow2-late-l2",
]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", VARIANTS)
def test_file_source_matches_qemu_img(images: ImageSet, tmp_path: Path, name: str) -> None:
    image = images.images[name]
    out = tmp_path / "disk.out"
    result = imagestream.write(str(image.path), out, checksum=file_digest(image.path))
    assert result.verified
    assert result.virtual_size == image.virtual_size
    assert out.stat().st_size == image.virtual_size
    assert sha256_file(out) == image.reference_sha256


@pytest.mark.parametrize("name", VARIANTS)
def test_http_source_one_get(
    images: ImageSet, http_server: Server, tmp_path: Path, name: str
) -> None:
    image = images.images[name]
    out = tmp_path / "disk.out"
    before = len(http_server.gets(image.path.name))
    result = imagestream.write(
        http_server.url(image.path.name), out, checksum=file_digest(image.path)
    )
    assert result.verified
    assert result.bytes_read == image.path.stat().st_size
    assert sha256_file(out) == image.reference_sha256
    gets = http_server.gets(image.path.name)[before:]
    if image.in_order:
        assert gets == [None], "an in-order layout must cost exactly one GET"
        assert result.range_requests == 0
        # Held-back bytes stay small: a few clusters, never the image.
        assert result.peak_buffered <= max(4 << 20, 3 * (image.path.stat().st_size >> 6))
    else:
        assert gets[0] is None


def test_late_tables_with_small_buffer_use_ranges(
    images: ImageSet, http_server: Server, tmp_path: Path
) -> None:
    image = images.images["qcow2-late-l2"]
    out = tmp_path / "disk.out"
    before = len(http_server.gets(image.path.name))
    result = imagestream.write(http_server.url(image.path.name), out, max_buffer=256 << 10)
    gets = http_server.gets(image.path.name)[before:]
    assert gets[0] is None
    assert len(gets) >= 2
    assert all(g is not None and g.startswith("bytes=") for g in gets[1:])
    assert result.range_requests == len(gets) - 1
    # Bounded: the limit plus at most one read chunk.
    assert result.peak_buffered <= (256 << 10) + (1 << 20)
    assert sha256_file(out) == image.reference_sha256


def test_late_tables_without_range_support(
    images: ImageSet, http_server_no_range: Server, tmp_path: Path
) -> None:
    image = images.images["qcow2-late-l2"]
    url = http_server_no_range.url(image.path.name)
    # Within the buffer bound: one GET, still exact.
    out = tmp_path / "ok.out"
    before = len(http_server_no_range.gets(image.path.name))
    imagestream.write(url, out)
    assert http_server_no_range.gets(image.path.name)[before:] == [None]
    assert sha256_file(out) == image.reference_sha256
    # Beyond it: the server ignores Range (answers 200), which must be detected and refused.
    with pytest.raises(imagestream.LayoutError, match="range requests"):
        imagestream.write(url, tmp_path / "fail.out", max_buffer=256 << 10)


def test_existing_disk_gets_zeros_and_nothing_past_virtual_size(
    images: ImageSet, tmp_path: Path
) -> None:
    """On a target that is not zeroed, unallocated/zero clusters must still read as zeros,
    and bytes past the virtual size stay untouched."""
    image = images.images["qcow2-extl2"]
    disk = tmp_path / "disk"
    tail = b"\xa5" * (1 << 20)
    disk.write_bytes(b"\xff" * image.virtual_size + tail)
    imagestream.write(str(image.path), disk)
    assert disk.stat().st_size == image.virtual_size + len(tail)
    assert sha256_file(disk, image.virtual_size) == image.reference_sha256
    with disk.open("rb") as f:
        f.seek(image.virtual_size)
        assert f.read() == tail


def test_assume_zeroed_skips_zero_regions(images: ImageSet, tmp_path: Path) -> None:
    image = images.images["qcow2-v3"]
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(image.virtual_size))
    imagestream.write(str(image.path), disk, assume_zeroed=True)
    assert sha256_file(disk) == image.reference_sha256


@pytest.fixture
def block_device(tmp_path: Path) -> Iterator[Path]:
    """A loop device when this machine allows one, else a regular file standing in."""
    backing = tmp_path / "backing"
    backing.write_bytes(b"\xee" * (48 << 20))
    try:
        dev = subprocess.run(
            ["losetup", "-f", "--show", str(backing)], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        yield backing
        return
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.parametrize("name", ["qcow2-zstd", "raw-gz", "qcow2-extl2"])
def test_block_device_target(images: ImageSet, block_device: Path, name: str) -> None:
    image = images.images[name]
    result = imagestream.write(str(image.path), block_device)
    assert result.virtual_size == image.virtual_size
    assert sha256_file(block_device, image.virtual_size) == image.reference_sha256
    with block_device.open("rb") as f:
        f.seek(image.virtual_size)
        assert set(f.read(4096)) == {0xEE}


def test_target_too_small_is_refused_before_writing(images: ImageSet, tmp_path: Path) -> None:
    image = images.images["qcow2-v3"]
    disk = tmp_path / "small"
    disk.write_bytes(b"\x77" * (image.virtual_size - 512))
    with pytest.raises(imagestream.TargetError, match="less than the image's virtual size"):
        imagestream.write(str(image.path), disk)
    assert disk.read_bytes() == b"\x77" * (image.virtual_size - 512)


@pytest.mark.parametrize("name", ["raw-gz", "raw-xz", "raw-zst"])
@pytest.mark.parametrize("over_http", [False, True])
def test_compressed_raw_too_big_is_refused_before_writing(
    images: ImageSet, http_server: Server, tmp_path: Path, name: str, over_http: bool
) -> None:
    """gzip and xz record their size at the end, zstd at the start: read before writing."""
    image = images.images[name]
    disk = tmp_path / "small"
    disk.write_bytes(b"\x77" * (image.virtual_size - 4096))
    source = http_server.url(image.path.name) if over_http else str(image.path)
    before = len(http_server.gets(image.path.name))
    with pytest.raises(imagestream.TargetError, match="less than the image's virtual size"):
        imagestream.write(source, disk)
    assert disk.read_bytes() == b"\x77" * (image.virtual_size - 4096)
    if over_http and name != "raw-zst":
        # The stream, then the small range requests for the trailer (xz: footer and index).
        gets = http_server.gets(image.path.name)[before:]
        assert gets[0] is None
        assert len(gets) == (3 if name == "raw-xz" else 2)
        assert all(g is not None and g.startswith("bytes=") for g in gets[1:])


def test_gzip_without_range_support_stops_at_the_target_end(
    images: ImageSet, http_server_no_range: Server, tmp_path: Path
) -> None:
    """Without Range the size shows only at the end: the write stops at the target's end."""
    image = images.images["raw-gz"]
    disk = tmp_path / "small"
    disk.write_bytes(b"\x77" * (image.virtual_size - 4096))
    with pytest.raises(imagestream.TargetError, match="past the image's virtual size or the"):
        imagestream.write(http_server_no_range.url(image.path.name), disk)
    assert disk.stat().st_size == image.virtual_size - 4096


def test_compressed_raw_that_fits_reports_its_trailer_reads(
    images: ImageSet, http_server: Server, tmp_path: Path
) -> None:
    image = images.images["raw-xz"]
    disk = tmp_path / "exact"
    disk.write_bytes(b"\x77" * image.virtual_size)
    result = imagestream.write(http_server.url(image.path.name), disk)
    assert result.range_requests == 2
    assert sha256_file(disk) == image.reference_sha256


def test_info_reports_formats(images: ImageSet, http_server: Server) -> None:
    q = imagestream.info(str(images.images["qcow2-zstd"].path))
    assert (q.format, q.compression, q.cluster_size) == ("qcow2", "zstd", 65536)
    assert q.virtual_size == images.images["qcow2-zstd"].virtual_size
    assert q.file_size == images.images["qcow2-zstd"].path.stat().st_size
    big = imagestream.info(http_server.url(images.images["qcow2-2m"].path.name))
    assert (big.cluster_size, big.qcow2_version) == (2 << 20, 3)
    v2 = imagestream.info(str(images.images["qcow2-v2"].path))
    assert v2.qcow2_version == 2
    ext = imagestream.info(str(images.images["qcow2-extl2"].path))
    assert ext.extended_l2
    xz = imagestream.info(str(images.images["raw-xz"].path))
    assert (xz.format, xz.inner_format, xz.compression) == ("xz", "raw", "xz")
    # The size comes from the xz index at the end of the file (locally, or by range requests).
    assert xz.virtual_size == images.images["raw-xz"].virtual_size
    xz_http = imagestream.info(http_server.url(images.images["raw-xz"].path.name))
    assert xz_http.virtual_size == images.images["raw-xz"].virtual_size
    gz = imagestream.info(str(images.images["raw-gz"].path))
    assert gz.virtual_size is None, "gzip records the size only modulo 2**32: not reported"
    raw = imagestream.info(str(images.raw))
    assert (raw.format, raw.virtual_size) == ("raw", images.raw.stat().st_size)
