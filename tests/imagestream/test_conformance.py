"""The target must be byte-identical to `qemu-img convert -O raw` for every supported variant,
from a file and over HTTP, with one GET for layouts as `qemu-img convert` writes them.

Targets are direct-I/O loop devices (the `loop_devices` fixture), as a disk would be; plain files
are targets only in tests whose names or ids say `file`."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from imagestream_support import ImageSet, Server, run, sha256_file

from loopdev import LoopDevices, make_backing
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


# Bytes after the virtual size on targets that are larger: they must stay as they were.
TAIL = 1 << 20


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.mark.parametrize("name", VARIANTS)
def test_file_source_to_block_device_matches_qemu_img(
    images: ImageSet, loop_devices: LoopDevices, name: str
) -> None:
    """Onto a direct-I/O loop device holding old bytes: every byte up to the virtual size as
    qemu-img makes it, nothing past it touched."""
    image = images.images[name]
    disk = loop_devices.new(image.virtual_size + TAIL, fill=0xEE, direct_io=True)
    result = imagestream.write(str(image.path), disk.path, checksum=file_digest(image.path))
    assert result.verified
    assert result.virtual_size == image.virtual_size
    assert sha256_file(disk.path, image.virtual_size) == image.reference_sha256
    assert read_at(disk.path, image.virtual_size, TAIL) == b"\xee" * TAIL


def test_block_device_data_goes_through_o_direct_and_zeros_through_zero_range(
    loop_devices: LoopDevices, tmp_path: Path
) -> None:
    """Seen from the system calls (strace): on a block device every data byte is written
    through the O_DIRECT descriptor and every other byte is zeroed by fallocate(ZERO_RANGE),
    none by writing zeros. The data extents come from `qemu-img map`."""
    strace = shutil.which("strace")
    assert strace, "strace is not installed (system-packages.txt lists it)"
    image = tmp_path / "sparse.qcow2"
    virtual = 32 << 20
    run("qemu-img", "create", "-q", "-f", "qcow2", image, str(virtual))
    run("qemu-io", "-c", "write -P 0x5a 1M 4M", "-c", "write -P 0x11 20M 1M", image)
    extents = json.loads(
        subprocess.run(
            ["qemu-img", "map", "--output=json", "-f", "qcow2", str(image)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    data_bytes = sum(e["length"] for e in extents if e["data"] and not e.get("zero", False))
    assert data_bytes == 5 << 20
    reference = tmp_path / "reference.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, reference)
    disk = loop_devices.new(virtual + TAIL, fill=0xEE, direct_io=True)
    trace = tmp_path / "trace"
    code = "import sys\nfrom metal3 import imagestream\nimagestream.write(sys.argv[1], sys.argv[2])"
    syscalls = "trace=openat,fallocate,pwrite64,pwritev,pwritev2,write"
    strace_args = ["-qq", "-f", "-ff", "-o", str(trace), "-e", "signal=none", "-e", syscalls]
    writer = [sys.executable, "-c", code, str(image), str(disk.path)]
    subprocess.run([strace, *strace_args, *writer], check=True, capture_output=True)
    calls = [line for f in tmp_path.glob("trace.*") for line in f.read_text().splitlines()]
    opened: dict[int, list[str]] = {}  # descriptor -> flags, for the opens of the device
    for line in calls:
        if m := re.match(rf'openat\(AT_FDCWD, "{disk.path}", ([A-Z_|]+)\) = (\d+)$', line):
            opened[int(m[2])] = m[1].split("|")
    direct = [fd for fd, flags in opened.items() if "O_DIRECT" in flags]
    assert len(direct) == 1, f"no single O_DIRECT open of {disk.path}: {opened}"
    written = dict.fromkeys(opened, 0)
    zero_ranged = 0
    for line in calls:
        if m := re.match(r"(?:pwrite64|pwritev2?|write)\((\d+), .* = (\d+)$", line):
            if int(m[1]) in written:
                written[int(m[1])] += int(m[2])
        elif m := re.match(r"fallocate\((\d+), ([A-Z_|]+), (\d+), (\d+)\) = 0$", line):
            assert int(m[1]) in opened
            assert "FALLOC_FL_ZERO_RANGE" in m[2].split("|")
            zero_ranged += int(m[4])
    assert written[direct[0]] == data_bytes
    assert sum(written.values()) == data_bytes, "bytes written outside the O_DIRECT descriptor"
    assert zero_ranged == virtual - data_bytes
    assert sha256_file(disk.path, virtual) == sha256_file(reference)
    assert read_at(disk.path, virtual, TAIL) == b"\xee" * TAIL


@pytest.mark.parametrize("name", VARIANTS)
def test_http_source_to_new_file_one_get(
    images: ImageSet, http_server: Server, tmp_path: Path, name: str
) -> None:
    """Over HTTP into a file the write creates (holes for zeros, the length set at the end)."""
    image = images.images[name]
    out = tmp_path / "disk.out"
    before = len(http_server.gets(image.path.name))
    result = imagestream.write(
        http_server.url(image.path.name), out, checksum=file_digest(image.path)
    )
    assert result.verified
    assert result.bytes_read == image.path.stat().st_size
    assert out.stat().st_size == image.virtual_size
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
    images: ImageSet, http_server: Server, loop_devices: LoopDevices
) -> None:
    image = images.images["qcow2-late-l2"]
    disk = loop_devices.new(image.virtual_size, direct_io=True)
    before = len(http_server.gets(image.path.name))
    result = imagestream.write(http_server.url(image.path.name), disk.path, max_buffer=256 << 10)
    gets = http_server.gets(image.path.name)[before:]
    assert gets[0] is None
    assert len(gets) >= 2
    assert all(g is not None and g.startswith("bytes=") for g in gets[1:])
    assert result.range_requests == len(gets) - 1
    # Bounded: the limit plus at most one read chunk.
    assert result.peak_buffered <= (256 << 10) + (1 << 20)
    assert sha256_file(disk.path) == image.reference_sha256


def test_late_tables_without_range_support(
    images: ImageSet, http_server_no_range: Server, loop_devices: LoopDevices
) -> None:
    image = images.images["qcow2-late-l2"]
    url = http_server_no_range.url(image.path.name)
    disk = loop_devices.new(image.virtual_size, fill=0x77, direct_io=True)
    # Within the buffer bound: one GET, still exact.
    before = len(http_server_no_range.gets(image.path.name))
    imagestream.write(url, disk.path)
    assert http_server_no_range.gets(image.path.name)[before:] == [None]
    assert sha256_file(disk.path) == image.reference_sha256
    # Beyond it: the server ignores Range (answers 200), which must be detected and refused.
    with pytest.raises(imagestream.LayoutError, match="range requests"):
        imagestream.write(url, disk.path, max_buffer=256 << 10)


# Targets that exist before the write: a direct-I/O loop device over a file, or the file itself.
TARGET_KINDS = ["loop-device", "file"]


def existing_target(kind: str, loop_devices: LoopDevices, backing: Path) -> Path:
    if kind == "file":
        return backing
    return loop_devices.attach(backing, direct_io=True).path


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_existing_target_gets_zeros_and_nothing_past_virtual_size(
    images: ImageSet, loop_devices: LoopDevices, tmp_path: Path, kind: str
) -> None:
    """On a target that is not zeroed, unallocated/zero clusters must still read as zeros,
    and bytes past the virtual size stay untouched."""
    image = images.images["qcow2-extl2"]
    backing = make_backing(tmp_path / "disk", image.virtual_size + TAIL, fill=0xA5)
    with backing.open("r+b") as f:
        f.write(b"\xff" * image.virtual_size)
    disk = existing_target(kind, loop_devices, backing)
    imagestream.write(str(image.path), disk)
    assert sha256_file(disk, image.virtual_size) == image.reference_sha256
    assert read_at(disk, image.virtual_size, TAIL + 1) == b"\xa5" * TAIL
    assert backing.stat().st_size == image.virtual_size + TAIL


def test_assume_zeroed_skips_zero_regions(images: ImageSet, loop_devices: LoopDevices) -> None:
    image = images.images["qcow2-v3"]
    disk = loop_devices.new(image.virtual_size, direct_io=True)  # sparse: reads as zeros
    imagestream.write(str(image.path), disk.path, assume_zeroed=True)
    assert sha256_file(disk.path) == image.reference_sha256


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_target_too_small_is_refused_before_writing(
    images: ImageSet, loop_devices: LoopDevices, tmp_path: Path, kind: str
) -> None:
    """The size comes from the device on a block device, from the length on a file."""
    image = images.images["qcow2-v3"]
    size = image.virtual_size - 512
    disk = existing_target(kind, loop_devices, make_backing(tmp_path / "small", size, fill=0x77))
    with pytest.raises(imagestream.TargetError, match="less than the image's virtual size"):
        imagestream.write(str(image.path), disk)
    assert disk.read_bytes() == b"\x77" * size


@pytest.mark.parametrize("name", ["raw-gz", "raw-xz", "raw-zst"])
@pytest.mark.parametrize("over_http", [False, True])
def test_compressed_raw_too_big_is_refused_before_writing(
    images: ImageSet, http_server: Server, loop_devices: LoopDevices, name: str, over_http: bool
) -> None:
    """gzip and xz record their size at the end, zstd at the start: read before writing."""
    image = images.images[name]
    size = image.virtual_size - 4096
    disk = loop_devices.new(size, fill=0x77, direct_io=True)
    source = http_server.url(image.path.name) if over_http else str(image.path)
    before = len(http_server.gets(image.path.name))
    with pytest.raises(imagestream.TargetError, match="less than the image's virtual size"):
        imagestream.write(source, disk.path)
    assert disk.path.read_bytes() == b"\x77" * size
    if over_http and name != "raw-zst":
        # The stream, then the small range requests for the trailer (xz: footer and index).
        gets = http_server.gets(image.path.name)[before:]
        assert gets[0] is None
        assert len(gets) == (3 if name == "raw-xz" else 2)
        assert all(g is not None and g.startswith("bytes=") for g in gets[1:])


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_gzip_without_range_support_stops_at_the_target_end(
    images: ImageSet,
    http_server_no_range: Server,
    loop_devices: LoopDevices,
    tmp_path: Path,
    kind: str,
) -> None:
    """Without Range the size shows only at the end: the write stops at the target's end."""
    image = images.images["raw-gz"]
    size = image.virtual_size - 4096
    backing = make_backing(tmp_path / "small", size, fill=0x77)
    disk = existing_target(kind, loop_devices, backing)
    with pytest.raises(imagestream.TargetError, match="past the image's virtual size or the"):
        imagestream.write(http_server_no_range.url(image.path.name), disk)
    assert backing.stat().st_size == size


def test_compressed_raw_that_fits_reports_its_trailer_reads(
    images: ImageSet, http_server: Server, loop_devices: LoopDevices
) -> None:
    image = images.images["raw-xz"]
    disk = loop_devices.new(image.virtual_size, fill=0x77, direct_io=True)
    result = imagestream.write(http_server.url(image.path.name), disk.path)
    assert result.range_requests == 2
    assert sha256_file(disk.path) == image.reference_sha256


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
