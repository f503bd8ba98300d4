"""Target I/O errors reach Python as distinct kinds with their errno, from real kernel paths: a
full tmpfs (ENOSPC), a disk whose backing filesystem is shut down mid-write (EIO), a read-only
loop device (EPERM), a read-only bind mount (EROFS) and a file the process may not write
(EACCES, root without capabilities); a missing folder (ENOENT) stands for the other errnos."""

from __future__ import annotations

import errno
import fcntl
import http.server
import json
import os
import random
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from imagestream_support import MiB, run, sha256_file

from metal3 import imagestream

# EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); NOLOGFLUSH stops the filesystem at once, as a disk
# that stops answering would.
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 MiB raw image of random data: every byte must be written, none can be skipped."""
    path = tmp_path_factory.mktemp("io-errors") / "disk.raw"
    path.write_bytes(random.Random(13).randbytes(16 * MiB))
    return path


@contextmanager
def mounted(*args: str | Path) -> Iterator[None]:
    """`mount ARGS` for the duration; the last argument is the mount point."""
    run("mount", *args)
    try:
        yield
    finally:
        run("umount", args[-1])


@contextmanager
def loop_device(backing: Path, *, read_only: bool = False) -> Iterator[Path]:
    out = subprocess.run(
        ["losetup", "-f", "--show", *(["-r"] if read_only else []), str(backing)],
        check=True,
        capture_output=True,
        text=True,
    )
    dev = Path(out.stdout.strip())
    try:
        yield dev
    finally:
        run("losetup", "-d", dev)


@contextmanager
def full_tmpfs(where: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: the first megabyte of data fills it."""
    where.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=1M", "metal3-full", where):
        yield where


@contextmanager
def ext4(where: Path, size: int) -> Iterator[Path]:
    """A fresh ext4 filesystem in a file, mounted through a loop device."""
    fs = where.with_suffix(".ext4")
    with fs.open("wb") as f:
        f.truncate(size)
    run("mkfs.ext4", "-q", "-F", fs)
    where.mkdir()
    with mounted("-o", "loop", fs, where):
        yield where


def shut_down(mountpoint: Path) -> None:
    fd = os.open(mountpoint, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)


def sparse_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def test_hierarchy() -> None:
    """OS-level target errors are TargetErrors (old handlers keep working) and OSErrors."""
    for cls in (
        imagestream.TargetFullError,
        imagestream.TargetDeviceError,
        imagestream.TargetPermissionError,
    ):
        assert issubclass(cls, imagestream.TargetIOError)
    assert issubclass(imagestream.TargetIOError, imagestream.TargetError)
    assert issubclass(imagestream.TargetIOError, OSError)
    assert issubclass(imagestream.TargetPermissionError, PermissionError)
    assert issubclass(imagestream.InternalError, imagestream.ImageStreamError)
    assert not issubclass(imagestream.InternalError, imagestream.ChecksumMismatchError)
    assert imagestream.TargetFullError.retryable is True
    not_retryable: tuple[type[imagestream.TargetError], ...] = (
        imagestream.TargetError,
        imagestream.TargetIOError,
        imagestream.TargetDeviceError,
        imagestream.TargetPermissionError,
    )
    for target_error in not_retryable:
        assert target_error.retryable is False, target_error


def test_full_filesystem_new_file(image: Path, tmp_path: Path) -> None:
    with full_tmpfs(tmp_path / "full") as full:
        target = full / "disk"
        with pytest.raises(imagestream.TargetFullError) as caught:
            imagestream.write(str(image), target)
    e = caught.value
    assert e.errno == errno.ENOSPC
    assert e.retryable
    assert isinstance(e, OSError)
    assert isinstance(e, imagestream.TargetError)
    assert str(target) in str(e)
    assert str(e).startswith(f"[Errno {errno.ENOSPC}] ")


def test_full_thin_disk(image: Path, tmp_path: Path) -> None:
    """A loop device over a sparse file on a full tmpfs: a thin-provisioned disk out of space.
    Its size passes the capacity check; the device then refuses a write with ENOSPC."""
    with full_tmpfs(tmp_path / "full") as full:
        backing = sparse_file(full / "thin", 32 * MiB)
        with loop_device(backing) as dev, pytest.raises(imagestream.TargetFullError) as caught:
            imagestream.write(str(image), dev)
    assert caught.value.errno == errno.ENOSPC
    assert str(dev) in str(caught.value)


class PausingServer:
    """Serves one file over HTTP on 127.0.0.1, holding the rest back after `split` bytes until
    released: the test acts while the write is half done."""

    def __init__(self, path: Path, split: int) -> None:
        self.release = threading.Event()
        data, release = path.read_bytes(), self.release

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data[:split])
                    self.wfile.flush()
                    release.wait(60)
                    self.wfile.write(data[split:])
                except (BrokenPipeError, ConnectionResetError):
                    return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.name}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_disk_dying_mid_write(image: Path, tmp_path: Path) -> None:
    """The target is a loop device over a file on ext4; once part of the image is on it, that
    ext4 is shut down, so the device fails every further write with EIO, like a dead disk."""
    server = PausingServer(image, split=8 * MiB)
    written_at_death: list[int] = []
    try:
        with ext4(tmp_path / "fs", 64 * MiB) as fs:
            backing = sparse_file(fs / "disk", 32 * MiB)
            with loop_device(backing) as dev:

                def progress(read: int, written: int, total: int | None) -> None:
                    if written and not written_at_death:
                        shut_down(fs)
                        written_at_death.append(written)
                        server.release.set()

                with pytest.raises(imagestream.TargetDeviceError) as caught:
                    imagestream.write(server.url, dev, progress=progress, progress_interval=0.01)
    finally:
        server.close()
    assert written_at_death, "the write failed before anything reached the disk"
    assert 0 < written_at_death[0] < image.stat().st_size
    e = caught.value
    assert e.errno == errno.EIO
    assert not e.retryable
    assert str(dev) in str(e)


def test_file_on_dead_filesystem(image: Path, tmp_path: Path) -> None:
    with ext4(tmp_path / "fs", 16 * MiB) as fs:
        target = fs / "disk"
        target.write_bytes(b"\x5c" * MiB)
        shut_down(fs)
        with pytest.raises(imagestream.TargetDeviceError) as caught:
            imagestream.write(str(image), target)
    assert caught.value.errno == errno.EIO
    assert f"target {target}" in str(caught.value)


def test_missing_directory(image: Path, tmp_path: Path) -> None:
    """Other errnos are a plain TargetIOError, still with the errno, not retryable."""
    target = tmp_path / "no such folder" / "disk"
    with pytest.raises(imagestream.TargetIOError) as caught:
        imagestream.write(str(image), target)
    e = caught.value
    assert type(e) is imagestream.TargetIOError
    assert e.errno == errno.ENOENT
    assert not e.retryable
    assert (
        str(e) == f"[Errno {errno.ENOENT}] cannot create target {target}: No such file or directory"
    )


def test_read_only_device(image: Path, tmp_path: Path) -> None:
    """A read-only block device opens for writing but refuses every write with EPERM."""
    backing = tmp_path / "disk"
    backing.write_bytes(b"\x5c" * (32 * MiB))
    before = sha256_file(backing)
    with (
        loop_device(backing, read_only=True) as dev,
        pytest.raises(imagestream.TargetPermissionError) as caught,
    ):
        imagestream.write(str(image), dev)
    e = caught.value
    assert e.errno == errno.EPERM
    assert isinstance(e, PermissionError)
    assert not e.retryable
    assert sha256_file(backing) == before


@pytest.mark.parametrize("existing", [True, False], ids=["existing-file", "new-file"])
def test_read_only_filesystem(image: Path, tmp_path: Path, existing: bool) -> None:
    source = tmp_path / "src"
    source.mkdir()
    if existing:
        (source / "disk").write_bytes(b"\x5c" * MiB)
    view = tmp_path / "ro"
    view.mkdir()
    with (
        mounted("--bind", "-o", "ro", source, view),
        pytest.raises(imagestream.TargetPermissionError) as caught,
    ):
        imagestream.write(str(image), view / "disk")
    assert caught.value.errno == errno.EROFS
    assert str(view / "disk") in str(caught.value)
    assert [p.name for p in source.iterdir()] == (["disk"] if existing else [])
    if existing:
        assert (source / "disk").read_bytes() == b"\x5c" * MiB


WRITE_AND_REPORT = """
import json, sys
from metal3 import imagestream
try:
    imagestream.write(sys.argv[1], sys.argv[2])
except imagestream.ImageStreamError as e:
    print(json.dumps({"type": type(e).__name__, "errno": getattr(e, "errno", None),
                      "permission": isinstance(e, PermissionError), "message": str(e)}))
"""


def test_file_without_write_permission(image: Path, tmp_path: Path) -> None:
    """EACCES: root without capabilities (so without its DAC override) on a read-only file."""
    target = tmp_path / "disk"
    target.write_bytes(b"\x5c" * MiB)
    target.chmod(0o444)
    done = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            sys.executable,
            "-c",
            WRITE_AND_REPORT,
            str(image),
            str(target),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(done.stdout)
    assert report["type"] == "TargetPermissionError", report
    assert report["errno"] == errno.EACCES
    assert report["permission"] is True
    assert target.read_bytes() == b"\x5c" * MiB
