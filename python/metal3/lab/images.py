"""The lab's image server, and the agent ISO it serves for virtual-media boots.

Files in `DIR/images/` are served over HTTP/1.1 (GET and HEAD, one byte range per request
with `Range: bytes=...`, 206/416 as RFC 9110 says; several ranges in one request are answered
with the whole file, which the RFC allows) on two listeners: the gateway address inside the
lab namespace, for the hosts, and 127.0.0.1, for the BMCs' virtual-media downloads and the
operator. Nothing else is served: no listings, nothing outside the folder, no symlinks out of
it. Every request is appended to `DIR/images/access.log` as a JSON line
(`{"time", "listener", "client", "method", "path", "range", "status", "bytes"}`, `bytes` being
the body bytes sent, counted a MiB at a time: for a client that left half way, up to a MiB
it was sent last may be missing) so tests can count GETs.

The agent ISO (`agent.iso`) is what the lab's hosts boot the agent from by virtual media: an
ISO 9660 image whose `boot/cmdline` names the agent API and its CA the way a real agent ISO's
kernel command line does (`metal3.agent_api=`, `metal3.agent_ca=`). A host whose virtual CD
holds exactly this image (same sha256) boots the agent; any other image boots nothing.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import io
import json
import logging
import os
import socket
import threading
import urllib.parse
from pathlib import Path
from typing import Any, cast

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, listener: str, images: ImageServer) -> None:
        super().__init__(sock.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.listener = listener
        self.images = images


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 120  # an idle keep-alive connection is closed after this many seconds
    body_sent = 0  # body bytes of the current response sent so far

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("image server: " + format, *args)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        images = self.server.images
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        requested = self.headers.get("Range")
        self.body_sent = 0  # kept up to date while sending: a client may leave half way
        status = 500
        try:
            file = images.resolve(path)
            if file is None:
                status = 404
                self._empty(404)
                return
            with file.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                span = parse_range(requested, size)
                if isinstance(span, str):  # unsatisfiable
                    status = 416
                    self._empty(416, {"Content-Range": f"bytes */{size}"})
                    return
                start, end = span if span is not None else (0, size - 1)
                length = max(0, end - start + 1)
                status = 206 if span is not None else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Last-Modified", self.date_time_string(int(file.stat().st_mtime)))
                if span is not None:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if body and length:
                    self._send_file(handle, start, length)
        except OSError as exc:
            log.info("image server: %s %s: %s", self.command, path, exc)
            self.close_connection = True
        finally:
            images.record(
                listener=self.server.listener,
                client=f"{self.client_address[0]}:{self.client_address[1]}",
                method=self.command,
                path=path,
                range_header=requested,
                status=status,
                sent=self.body_sent,
            )

    def _send_file(self, handle: io.BufferedReader, start: int, length: int) -> None:
        self.wfile.flush()
        while self.body_sent < length:
            count = self.connection.sendfile(
                handle, start + self.body_sent, min(CHUNK, length - self.body_sent)
            )
            if count == 0:
                break
            self.body_sent += count

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) byte of a single `bytes=` range, "unsatisfiable", or None (no range, a
    malformed one or several: the whole file is sent)."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return "unsatisfiable"
            return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
        start = int(first)
        end = int(last) if last else max(start, size - 1)
    except ValueError:
        return None
    if start < 0 or end < start:
        return None  # malformed: ignored, as RFC 9110 says
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class ImageServer:
    """Serves `directory` on the listening sockets given (name -> socket)."""

    def __init__(self, directory: Path, access_log: Path) -> None:
        self.directory = directory.resolve()
        self.access_log = access_log
        self._log_lock = threading.Lock()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    def resolve(self, url_path: str) -> Path | None:
        """The regular file under the folder that `url_path` names, or None."""
        parts = [p for p in url_path.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            return None
        candidate = (self.directory / "/".join(parts)).resolve()
        if not candidate.is_relative_to(self.directory) or not candidate.is_file():
            return None
        return candidate

    def record(
        self,
        *,
        listener: str,
        client: str,
        method: str,
        path: str,
        range_header: str | None,
        status: int,
        sent: int,
    ) -> None:
        line = json.dumps(
            {
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                "listener": listener,
                "client": client,
                "method": method,
                "path": path,
                "range": range_header,
                "status": status,
                "bytes": sent,
            }
        )
        with self._log_lock, self.access_log.open("a") as handle:
            handle.write(line + "\n")

    def serve(self, listener: str, sock: socket.socket) -> None:
        server = _Server(sock, listener, self)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"images-{listener}"
        )
        thread.daemon = True
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()


# --- the agent ISO ---------------------------------------------------------------------


def agent_cmdline(api_url: str, ca_pem: bytes) -> str:
    """The kernel arguments that point an agent at its API, as `metal3 agent run` reads them."""
    ca = base64.b64encode(ca_pem).decode()
    return f"metal3.agent_api={api_url} metal3.agent_ca={ca}"


def make_agent_iso(path: Path, *, api_url: str, ca_pem: bytes) -> str:
    """Write the lab's agent ISO to `path`; its sha256."""
    import pycdlib

    files = {
        "README.TXT": (
            b"metal3 lab agent boot media. A lab host that boots this image by virtual media\n"
            b"runs `metal3 agent run` with the kernel arguments in boot/cmdline.\n"
        ),
        "BOOT/CMDLINE": (agent_cmdline(api_url, ca_pem) + "\n").encode(),
    }
    iso = cast(Any, pycdlib.PyCdlib())  # pycdlib has no annotations
    iso.new(interchange_level=2, vol_ident="METAL3_AGENT", rock_ridge="1.09")
    iso.add_directory("/BOOT", rr_name="boot")
    for name, data in files.items():
        rr_name = name.rsplit("/", 1)[-1].lower()
        iso_name = name if "." in name.rsplit("/", 1)[-1] else name + "."
        iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name};1", rr_name=rr_name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    data = out.getvalue()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
