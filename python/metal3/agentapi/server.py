"""Serving the agent API: uvicorn over TLS on its own listener, inside the operator's process.

TLS is always on (agents send their token): the certificate and key come from files
(`metal3 operator --agent-cert/--agent-key`), or, for `metal3 standalone`, are generated once
into the data directory (``agent-tls/``: ``ca.crt`` is what agents are given to trust) and kept
across restarts, so agents keep trusting the operator after it restarts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from cryptography import x509

from metal3.agentapi.app import AgentApi
from metal3.agentapi.ratelimit import RateLimit
from metal3.tls import TLSFiles, make_tls_files

log = logging.getLogger(__name__)

TLS_FOLDER = "agent-tls"
CERT_DAYS = 3650


@dataclass(frozen=True)
class AgentApiOptions:
    listen: str  # HOST:PORT
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # the CA agents must trust, when we know it (told to users)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    poll_seconds: float = 30.0


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too); an empty host means 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"the agent API address must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def certificate_hosts(listen_host: str) -> list[str]:
    """The names a generated certificate covers: loopback, this machine's name, the listen
    address, and when listening on every address, the addresses the machine's name has."""
    hosts = {"127.0.0.1", "::1", "localhost", socket.gethostname()}
    if _unspecified(listen_host):
        with contextlib.suppress(OSError):
            for info in socket.getaddrinfo(socket.gethostname(), None):
                hosts.add(str(info[4][0]).split("%")[0])
    else:
        hosts.add(listen_host)
    return sorted(hosts)


def _covers(cert_file: Path, hosts: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    covered = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    covered |= set(names.get_values_for_type(x509.DNSName))
    wanted = set()
    for host in hosts:
        try:
            wanted.add(str(ipaddress.ip_address(host)))
        except ValueError:
            wanted.add(host)
    return wanted <= covered


def ensure_tls(data_dir: Path, listen_host: str) -> TLSFiles:
    """The standalone agent API's TLS files under ``data_dir``: made on first use, kept after
    (made again, with a new CA, only if they no longer cover the listen address)."""
    folder = data_dir / TLS_FOLDER
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = TLSFiles(folder / "ca.crt", folder / "tls.crt", folder / "tls.key")
    hosts = certificate_hosts(listen_host)
    if all(p.exists() for p in (files.ca_cert, files.cert, files.key)) and _covers(
        files.cert, hosts
    ):
        return files
    log.info("agent API: generating a CA and certificate in %s for %s", folder, ", ".join(hosts))
    return make_tls_files(
        files,
        hosts,
        ca_common_name="metal3 agent API CA",
        server_common_name="metal3 agent API",
        days=CERT_DAYS,
    )


class _Uvicorn(uvicorn.Server):
    """uvicorn inside the operator: the operator owns the signals and stops it itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class AgentServer:
    """A bound listener serving an `AgentApi`; `serve` runs it, `stop` ends it."""

    def __init__(self, options: AgentApiOptions, app: AgentApi) -> None:
        self.options = options
        self.app = app
        host, port = parse_listen(options.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                message = f"agent API: cannot listen on {options.listen}: {exc.strerror}"
                raise OSError(exc.errno, message) from exc
            sock.listen(1024)
            # Fail now, with a clear message, rather than on the first connection.
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(str(options.cert_file), str(options.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"agent API: cannot use {options.cert_file} and {options.key_file}: {exc}"
                ) from exc
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        bound = sock.getsockname()[1]
        self.url = f"https://{f'[{host}]' if family == socket.AF_INET6 else host}:{bound}"
        config = uvicorn.Config(
            app,
            http="httptools",
            loop="asyncio",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=75,
            timeout_graceful_shutdown=2,
            ssl_certfile=str(options.cert_file),
            ssl_keyfile=str(options.key_file),
            ssl_version=ssl.PROTOCOL_TLS_SERVER,
        )
        self.server = _Uvicorn(config)

    async def serve(self) -> None:
        """Serve until `stop` (or cancellation); the listener is closed afterwards."""
        log.info("agent API listening on %s", self.url)
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            self.server.should_exit = True
            self.sock.close()

    def stop(self) -> None:
        self.app.close()
        self.server.should_exit = True
