"""Helpers shared by the image streaming tests (imported by name: conftest puts this folder on
sys.path, since pytest's importlib mode does not)."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20


def sha256_file(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    left = limit
    with path.open("rb") as f:
        while True:
            n = 1 << 20 if left is None else min(1 << 20, left)
            if n == 0:
                break
            block = f.read(n)
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


@dataclass
class Image:
    path: Path
    reference_sha256: str
    virtual_size: int
    # True for layouts as `qemu-img convert` writes them (tables before the data they place).
    in_order: bool = True


@dataclass
class ImageSet:
    root: Path
    raw: Path
    images: dict[str, Image] = field(default_factory=dict)


@dataclass
class Server:
    """An HTTP server on 127.0.0.1 serving a folder; it records every request."""

    base: str
    root: Path
    requests: list[tuple[str, str, str | None]]
    httpd: http.server.ThreadingHTTPServer

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def gets(self, name: str) -> list[str | None]:
        """Range headers of the GETs of /name (None for plain GETs)."""
        return [
            rng for method, path, rng in self.requests if method == "GET" and path == f"/{name}"
        ]
