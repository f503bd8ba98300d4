"""The boot server's HTTP side: iPXE scripts and the agent's kernel and initramfs.

Listens on the provisioning address only. Serves exactly four kinds of path, nothing else (no
listings, no other files): `/boot.ipxe` (the chain script DHCP names), `/boot/<mac>.ipxe`
(a host's script, made from the registry at each request), `/vmlinuz` and `/initramfs.img`
(the ramdisk, sent with sendfile). Each request is a JSON line in the access log (time,
client, path, status, bytes), which is how tests and operators see what a machine fetched.
"""

from __future__ import annotations

import datetime
import http.server
import json
import logging
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metal3.bootserver.scripts import CHAIN_PATH, HOST_PREFIX, INITRAMFS_PATH, KERNEL_PATH

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_HOST_PATH = re.compile(r"^/boot/([0-9a-f]{2}(?:-[0-9a-f]{2}){5})\.ipxe$")


class BootContent:
    """What the HTTP server answers: scripts by callback, files from the ramdisk folder."""

    def __init__(
        self,
        *,
        chain: Callable[[], str],
        host: Callable[[str], str | None],
        ramdisk_dir: Path,
    ) -> None:
        self.chain = chain
        self.host = host  # MAC (aa:bb:...) -> its script, or None
        self.files = {
            KERNEL_PATH: ramdisk_dir / "vmlinuz",
            INITRAMFS_PATH: ramdisk_dir / "initramfs.img",
        }


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, content: BootContent, access_log: Path) -> None:
        super().__init__(sock.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.content = content
        self.access_log = access_log
        self.log_lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("boot server http: " + format, *args)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        content = self.server.content
        status, sent = 404, 0
        try:
            text: str | None = None
            if path == CHAIN_PATH:
                text = content.chain()
            elif path.startswith(HOST_PREFIX):
                match = _HOST_PATH.match(path.lower())
                if match:
                    text = content.host(match.group(1).replace("-", ":"))
            if text is not None:
                data = text.encode()
                status = 200
                self._head(200, len(data), "text/plain; charset=utf-8")
                if body:
                    self.wfile.write(data)
                    sent = len(data)
                return
            file = content.files.get(path)
            if file is None:
                self._head(404, 0)
                return
            with file.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                status = 200
                self._head(200, size, "application/octet-stream")
                if body:
                    self.wfile.flush()
                    while sent < size:
                        count = self.connection.sendfile(handle, sent, min(CHUNK, size - sent))
                        if count == 0:
                            break
                        sent += count
        except OSError as exc:
            log.info("boot server http: %s %s: %s", self.command, path, exc)
            self.close_connection = True
        finally:
            self._record(path, status, sent)

    def _head(self, status: int, length: int, kind: str | None = None) -> None:
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _record(self, path: str, status: int, sent: int) -> None:
        line = json.dumps(
            {
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                "client": self.client_address[0],
                "method": self.command,
                "path": path,
                "status": status,
                "bytes": sent,
            }
        )
        with self.server.log_lock, self.server.access_log.open("a") as handle:
            handle.write(line + "\n")


class BootHttpServer:
    """Serves ``content`` on a listening socket (made by the caller, bound where it must be)."""

    def __init__(self, sock: socket.socket, content: BootContent, access_log: Path) -> None:
        self._server = _Server(sock, content, access_log)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="bootserver-http",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
