"""The Python API: checksums (literal and checksum files), progress, cancellation, the GIL,
HTTP errors and redirects, HTTPS with an explicit CA or with verification disabled."""

from __future__ import annotations

import hashlib
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from imagestream_support import ImageSet, Server, sha256_file

from metal3 import imagestream


def digest(path: Path, algo: str) -> str:
    return hashlib.new(algo, path.read_bytes()).hexdigest()


@pytest.mark.parametrize("algo", ["md5", "sha256", "sha512"])
def test_literal_checksums(images: ImageSet, tmp_path: Path, algo: str) -> None:
    image = images.images["qcow2-zstd"]
    expected = digest(image.path, algo)
    result = imagestream.write(str(image.path), tmp_path / "t", checksum=expected.upper())
    assert result.verified
    assert result.checksum_algorithm == algo
    assert result.digest == expected
    explicit = imagestream.write(
        str(image.path), tmp_path / "u", checksum=expected, checksum_type=algo
    )
    assert explicit.verified


def test_no_checksum_is_not_verified(images: ImageSet, tmp_path: Path) -> None:
    result = imagestream.write(str(images.images["qcow2-v2"].path), tmp_path / "t")
    assert not result.verified
    assert result.digest is None
    assert result.expected_digest is None


def test_mismatch_raises_after_writing(images: ImageSet, tmp_path: Path) -> None:
    image = images.images["qcow2-zlib"]
    wrong = "1" * 128
    with pytest.raises(imagestream.ChecksumMismatchError) as info:
        imagestream.write(str(image.path), tmp_path / "t", checksum=wrong)
    result = info.value.result
    assert not result.verified
    assert result.checksum_algorithm == "sha512"
    assert result.expected_digest == wrong
    assert result.digest == digest(image.path, "sha512")
    assert "mismatch" in str(info.value)


@pytest.mark.parametrize(
    ("checksum", "checksum_type", "match"),
    [
        ("abc", "auto", "cannot tell the checksum type"),
        ("0" * 64, "md5", "not a md5 hex digest"),
        ("z" * 64, "sha256", "not a sha256 hex digest"),
        ("0" * 64, "crc32", "unknown checksum type"),
    ],
)
def test_bad_checksum_arguments(
    images: ImageSet, tmp_path: Path, checksum: str, checksum_type: str, match: str
) -> None:
    target = tmp_path / "t"
    with pytest.raises(imagestream.ChecksumError, match=match):
        imagestream.write(str(images.raw), target, checksum=checksum, checksum_type=checksum_type)
    assert not target.exists(), "argument errors come before anything is created"


def test_checksum_file_url(images: ImageSet, http_server: Server, tmp_path: Path) -> None:
    image = images.images["qcow2-512"]
    sums = images.root / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  other.qcow2\n{digest(image.path, 'sha256')} *{image.path.name}\n")
    result = imagestream.write(
        http_server.url(image.path.name), tmp_path / "t", checksum=http_server.url("SHA256SUMS")
    )
    assert result.verified
    assert sha256_file(tmp_path / "t") == image.reference_sha256
    local = imagestream.write(str(image.path), tmp_path / "u", checksum=f"file://{sums}")
    assert local.verified
    with pytest.raises(imagestream.ChecksumError, match="no line for"):
        imagestream.write(
            str(images.images["qcow2-v3"].path), tmp_path / "v", checksum=f"file://{sums}"
        )


def test_progress_reports_totals(images: ImageSet, http_server: Server, tmp_path: Path) -> None:
    image = images.images["qcow2-v3"]
    calls: list[tuple[int, int, int | None]] = []
    imagestream.write(
        http_server.url(f"slow/{image.path.name}"),
        tmp_path / "t",
        progress=lambda i, w, t: calls.append((i, w, t)),
        progress_interval=0.02,
    )
    size = image.path.stat().st_size
    assert len(calls) >= 2
    assert calls[-1][0] == size
    assert calls[-1][2] == size
    assert calls[-1][1] >= image.virtual_size - (1 << 20)
    ins = [c[0] for c in calls]
    assert ins == sorted(ins)


def test_cancel_token_stops_the_write(
    images: ImageSet, http_server: Server, tmp_path: Path
) -> None:
    image = images.images["qcow2-v3"]
    token = imagestream.CancelToken()

    def on_progress(read: int, written: int, total: int | None) -> None:
        token.cancel()

    with pytest.raises(imagestream.WriteCancelledError):
        imagestream.write(
            http_server.url(f"slow/{image.path.name}"),
            tmp_path / "t",
            progress=on_progress,
            progress_interval=0.02,
            cancel=token,
        )
    assert token.cancelled


def test_failing_progress_callback_propagates(
    images: ImageSet, http_server: Server, tmp_path: Path
) -> None:
    def boom(read: int, written: int, total: int | None) -> None:
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        imagestream.write(
            http_server.url(f"slow/{images.images['qcow2-v3'].path.name}"),
            tmp_path / "t",
            progress=boom,
            progress_interval=0.02,
        )


def test_gil_is_released(images: ImageSet, http_server: Server, tmp_path: Path) -> None:
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        imagestream.write(
            http_server.url(f"slow/{images.images['qcow2-v3'].path.name}"), tmp_path / "t"
        )
    finally:
        done.set()
        counter.join()
    assert ticks > 10


def test_http_errors(images: ImageSet, http_server: Server, tmp_path: Path) -> None:
    with pytest.raises(imagestream.SourceError, match="404"):
        imagestream.write(http_server.url("missing.qcow2"), tmp_path / "t")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(imagestream.SourceError):
        imagestream.write(f"http://127.0.0.1:{port}/x", tmp_path / "t", connect_timeout=2)
    with pytest.raises(ValueError, match="unsupported source"):
        imagestream.write("ftp://127.0.0.1/x", tmp_path / "t")


def test_redirect_is_followed(images: ImageSet, http_server: Server, tmp_path: Path) -> None:
    image = images.images["qcow2-zstd"]
    imagestream.write(http_server.url(f"redirect/{image.path.name}"), tmp_path / "t")
    assert sha256_file(tmp_path / "t") == image.reference_sha256


@pytest.fixture(scope="module")
def https_server(images: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 with a certificate from a throwaway CA; yields its base URL
    and leaves the CA bundle next to the images as ca.pem."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(images.root / "ca.pem"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    root = images.root

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_https(images: ImageSet, https_server: str, tmp_path: Path) -> None:
    image = images.images["qcow2-zlib"]
    url = f"{https_server}/{image.path.name}"
    result = imagestream.write(
        url, tmp_path / "a", ca_file=images.root / "ca.pem", checksum=digest(image.path, "sha256")
    )
    assert result.verified
    assert sha256_file(tmp_path / "a") == image.reference_sha256
    with pytest.raises(imagestream.SourceError):
        imagestream.write(url, tmp_path / "b")
    insecure = imagestream.write(url, tmp_path / "c", insecure=True)
    assert insecure.virtual_size == image.virtual_size
    assert sha256_file(tmp_path / "c") == image.reference_sha256
