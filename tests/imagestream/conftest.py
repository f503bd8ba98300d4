"""Fixtures for the image streaming tests: real images made by qemu-img, reference outputs from
`qemu-img convert -O raw`, and real HTTP servers on 127.0.0.1 (with and without Range support)."""

from __future__ import annotations

import http.server
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagestream_support import Image, ImageSet, MiB, Server, run, sha256_file


def _make_content(root: Path) -> Path:
    """A disk of real content: an ext4 filesystem from files, a long zero run, random data."""
    tree = root / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "random.bin").write_bytes(bytes(_random(3 * MiB)))
    (tree / "etc" / "motd").write_text("".join(f"line {i} of the motd\n" for i in range(50000)))
    fs = root / "fs.img"
    with fs.open("wb") as f:
        f.truncate(12 * MiB)
    run("mkfs.ext4", "-q", "-F", "-d", tree, fs)
    raw = root / "disk.raw"
    with raw.open("wb") as out:
        out.write(fs.read_bytes())
        out.write(bytes(6 * MiB))  # long zero run
        out.write(_random(2 * MiB + 4096))
        out.write(bytes(3 * MiB + 512 * 7))
    return raw


def _random(n: int) -> bytes:
    import random

    return random.Random(n).randbytes(n)


def _reference(image: Path, root: Path) -> tuple[str, int]:
    out = root / f"{image.name}.ref"
    run("qemu-img", "convert", "-O", "raw", image, out)
    digest = sha256_file(out)
    size = out.stat().st_size
    out.unlink()
    return digest, size


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    root = tmp_path_factory.mktemp("images")
    raw = _make_content(root)
    s = ImageSet(root=root, raw=raw)
    convert = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
    variants: dict[str, list[str]] = {
        "qcow2-v2": ["-o", "compat=0.10"],
        "qcow2-v3": ["-o", "compat=1.1"],
        "qcow2-512": ["-o", "cluster_size=512"],
        "qcow2-2m": ["-o", "cluster_size=2M"],
        "qcow2-zlib": ["-c"],
        "qcow2-zlib-v2": ["-c", "-o", "compat=0.10"],
        "qcow2-zstd": ["-c", "-o", "compression_type=zstd"],
        "qcow2-zlib-2m": ["-c", "-o", "cluster_size=2M"],
        "qcow2-zstd-512": ["-c", "-o", "cluster_size=512,compression_type=zstd"],
        "qcow2-extl2": ["-o", "extended_l2=on"],
        "qcow2-prealloc": ["-o", "preallocation=metadata"],
        "qcow2-unordered": ["-W"],
    }
    for name, opts in variants.items():
        path = root / f"{name}.qcow2"
        run(*convert, *opts, raw, path)
    # Subclusters: partial writes into an extended-L2 image leave clusters half allocated.
    run(
        "qemu-io",
        "-c",
        "write -P 0x5a 17M 4k",
        "-c",
        "write -P 0x33 17412k 2k",
        "-c",
        "write -z 1M 8k",
        root / "qcow2-extl2.qcow2",
    )
    # Tables after their data: a snapshot makes later writes copy the L2 table to the end of
    # the file, where it maps data clusters that lie before it.
    late = root / "qcow2-late-l2.qcow2"
    shutil.copy(root / "qcow2-v3.qcow2", late)
    run("qemu-img", "snapshot", "-c", "s1", late)
    run("qemu-io", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 20M 64k", late)
    run("qemu-img", "snapshot", "-d", "s1", late)
    for name in [*variants, "qcow2-late-l2"]:
        path = root / f"{name}.qcow2"
        digest, size = _reference(path, root)
        s.images[name] = Image(path, digest, size, in_order=name != "qcow2-late-l2")
    raw_digest = sha256_file(raw)
    size = raw.stat().st_size
    s.images["raw"] = Image(raw, raw_digest, size)
    run("gzip", "-k", "-1", raw)
    run("xz", "-k", "-0", "-T1", raw)
    run("zstd", "-q", "-k", raw)
    s.images["raw-gz"] = Image(root / "disk.raw.gz", raw_digest, size)
    s.images["raw-xz"] = Image(root / "disk.raw.xz", raw_digest, size)
    s.images["raw-zst"] = Image(root / "disk.raw.zst", raw_digest, size)
    return s


def _handler(root: Path, ranges: bool, log: list[tuple[str, str, str | None]]) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            log.append(("GET", self.path, self.headers.get("Range")))
            name = self.path.lstrip("/")
            if name.startswith("redirect/"):
                self.send_response(302)
                self.send_header("Location", "/" + name.removeprefix("redirect/"))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            truncate = name.startswith("truncated/")
            name = name.removeprefix("truncated/")
            slow = name.startswith("slow/")
            name = name.removeprefix("slow/")
            path = root / name
            if not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            start, end = 0, size
            rng = self.headers.get("Range")
            if ranges and rng and rng.startswith("bytes="):
                first, _, last = rng[6:].partition("-")
                start, end = int(first), min(int(last) + 1, size)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start))
            if ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            stop = start + (end - start) // 2 if truncate else end
            with path.open("rb") as f:
                f.seek(start)
                left = stop - start
                try:
                    while left > 0:
                        block = f.read(min(left, 64 << 10 if slow else 1 << 20))
                        self.wfile.write(block)
                        if slow:
                            time.sleep(0.01)
                        left -= len(block)
                except (BrokenPipeError, ConnectionResetError):
                    return
            if truncate:
                self.close_connection = True

    return Handler


def _serve(root: Path, ranges: bool) -> Iterator[Server]:
    log: list[tuple[str, str, str | None]] = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, ranges, log))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", root, log, httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def http_server(images: ImageSet) -> Iterator[Server]:
    """Serves the images with Range support."""
    yield from _serve(images.root, ranges=True)


@pytest.fixture(scope="session")
def http_server_no_range(images: ImageSet) -> Iterator[Server]:
    """Serves the images ignoring Range headers (answers 200 with the whole body)."""
    yield from _serve(images.root, ranges=False)
