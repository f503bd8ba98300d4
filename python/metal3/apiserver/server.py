"""Running the API server: storage, credentials, preloaded CRDs and the HTTP listener.

The HTTP/1.1 layer is uvicorn with the httptools parser: a mature ASGI server whose C parser
keeps per-request overhead far below our own handling, with TLS from the standard `ssl`
module and streamed (chunked) responses for watches.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
import yaml

from metal3 import sockets
from metal3.apiserver.core import Core, WriteOptions
from metal3.apiserver.credentials import ensure_credentials, write_kubeconfig
from metal3.apiserver.errors import ApiError
from metal3.apiserver.http import ApiServer
from metal3.apiserver.objects import deep_copy
from metal3.apiserver.registry import Registry
from metal3.apiserver.store import Store
from metal3.apiserver.strategies import CRD_KEY


class _Uvicorn(uvicorn.Server):
    """uvicorn, ending open watches first on shutdown instead of waiting for them, telling
    `on_started` once it serves, and returning from `run` after a SIGTERM or SIGINT (uvicorn
    raises the signal again once shut down, which ended the process before its store was
    closed)."""

    def __init__(
        self, config: uvicorn.Config, app: ApiServer, on_started: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self._app = app
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._app.close_watches()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


@dataclass
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 6443
    crds: Path | None = None
    insecure_http: bool = False
    history: int = 10_000
    bookmark_interval: float = 60.0
    event_ttl: float = 3600.0  # Events expire this long after their last write, as upstream
    # A listening TCP socket to serve on instead of binding `host:port` (`port` is then the
    # socket's), handed down by a parent that had to know the port first (`metal3 standalone`).
    listen_fd: int | None = None
    # Where to write the server's URL and a newline once it is about to serve, then close.
    ready_fd: int | None = None


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, not {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def preload_crds(core: Core, folder: Path) -> list[str]:
    """Create or update every CRD found in YAML files under `folder`."""
    rt = core.registry.by_key(CRD_KEY)
    assert rt is not None
    names: list[str] = []
    for path in sorted(folder.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            name = doc["metadata"]["name"]
            existing = core.store.get(CRD_KEY, "", name)
            if existing is None:
                core.create(rt, "v1", None, doc, WriteOptions())
            else:
                body = deep_copy(doc)
                body["metadata"] = {**existing["metadata"], **body["metadata"]}
                core.update(rt, "v1", None, name, body, "", WriteOptions())
            names.append(name)
    return names


def build_app(config: ServerConfig, token: str | None, address: str) -> tuple[ApiServer, Store]:
    store = Store(config.data_dir / "state.db", history=config.history)
    core = Core(store, Registry())
    if config.crds is not None:
        try:
            preload_crds(core, config.crds)
        except BaseException:
            store.close()  # its lock too
            raise
    app = ApiServer(
        core,
        token,
        address,
        bookmark_interval=config.bookmark_interval,
        event_ttl=config.event_ttl,
    )
    return app, store


def serve(config: ServerConfig) -> int:
    """`metal3 apiserver`: serve until SIGINT/SIGTERM; returns the exit code."""
    if config.insecure_http and not _is_loopback(config.host):
        print("error: --insecure-http is only allowed on a loopback address", file=sys.stderr)
        return 2
    try:
        prepared = prepare(config)
    except (ApiError, OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 1
    if config.ready_fd is None:
        print(f"metal3 apiserver listening on {prepared.url}", flush=True)
        print(f"kubeconfig: {prepared.kubeconfig}", flush=True)
    else:  # the parent that asked says it is ready, once it serves
        ready_fd = config.ready_fd

        def say_ready() -> None:
            with contextlib.suppress(OSError), open(ready_fd, "w") as ready:
                ready.write(prepared.url + "\n")

        prepared.server.on_started = say_ready
    try:
        # asyncio.run ends (cancels, then awaits) every request task before it returns, so
        # none writes to the store once it is closed.
        prepared.server.run(sockets=[prepared.sock])
    finally:
        prepared.store.close()
    return 0


@dataclass
class PreparedServer:
    """A bound, configured API server, ready to be served (`serve`)."""

    url: str
    kubeconfig: Path
    server: _Uvicorn
    sock: socket.socket
    store: Store


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on `host:port` (port 0: any free port), as the server wants:
    a deep backlog, and no Nagle delay on a response's header and body writes."""
    return sockets.listening_socket(host, port, backlog=1024, no_delay=True)


def prepare(config: ServerConfig) -> PreparedServer:
    """Credentials, storage, listener and kubeconfig: everything `serve` needs to serve."""
    if config.insecure_http and not _is_loopback(config.host):
        raise ValueError("--insecure-http is only allowed on a loopback address")
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    hosts = sorted({"127.0.0.1", "localhost", "::1", config.host})
    creds = ensure_credentials(config.data_dir, hosts)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    if config.listen_fd is None:
        sock = listening_socket(config.host, config.port)
    else:
        sock = socket.socket(fileno=config.listen_fd)
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.close()
            raise ValueError(f"descriptor {config.listen_fd} is not a listening socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = sock.getsockname()[1]
    host_text = f"[{config.host}]" if family == socket.AF_INET6 else config.host
    url = f"{'http' if config.insecure_http else 'https'}://{host_text}:{port}"
    try:
        app, store = build_app(config, creds.token, f"{host_text}:{port}")
    except BaseException:
        sock.close()
        raise
    kubeconfig = config.data_dir / "kubeconfig"
    write_kubeconfig(kubeconfig, url, creds.token, None if config.insecure_http else creds.ca_cert)
    options: dict[str, Any] = {}
    if not config.insecure_http:
        options = {
            "ssl_certfile": str(creds.server_cert),
            "ssl_keyfile": str(creds.server_key),
            "ssl_version": ssl.PROTOCOL_TLS_SERVER,
        }
    uv_config = uvicorn.Config(
        app,
        http="httptools",
        loop="asyncio",
        lifespan="on",  # runs the Event expiry task
        log_level="warning",
        access_log=False,
        timeout_keep_alive=120,
        # Watches stream for up to 30 minutes: do not wait for them on shutdown.
        timeout_graceful_shutdown=2,
        **options,
    )
    return PreparedServer(url, kubeconfig, _Uvicorn(uv_config, app), sock, store)
