"""Standalone mode: the embedded API server and the operator, run as one command.

For a first cluster's hosts (no Kubernetes yet), the demo, and anyone without a cluster: the
project's CRDs are installed on start, `DIR/kubeconfig` lets kubectl manage the hosts, and a
restart on the same directory carries on where it stopped (the store, and with the fixture
provisioner its simulated hardware, are kept in the directory; the direct provisioner keeps
nothing of its own: the hosts' BMCs and the API store hold its state).

The API server runs as a child process (`metal3 apiserver` on a socket this process binds,
so the port is known before it starts): in one process, the server's half of every request
the operator makes and the operator's own work shared one interpreter lock, and with fifty
hosts booting at once the operator's bursts queued behind it (the 50-host benchmark's
orchestration overhead went from 4.3 to 3.3 s at the median with the server apart). The
child is killed by the kernel if this process dies (`metal3.childprocess`), and its store
takes a lock, so a restart never finds two servers on one directory.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio

from metal3.agentapi.ratelimit import RateLimit
from metal3.agentapi.server import AgentApiOptions, ensure_tls, parse_listen
from metal3.api.crd import all_crds, render
from metal3.apiserver.server import listening_socket
from metal3.childprocess import die_with_parent
from metal3.operator import Operator, OperatorOptions
from metal3.provisioner.base import ProvisionerFactory

log = logging.getLogger(__name__)


@dataclass
class StandaloneOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (the kubeconfig says which)
    # The operator's options; its kubeconfig is the embedded server's.
    operator: OperatorOptions = field(default_factory=OperatorOptions)
    # HOST:PORT of the agent API (None: not served); its TLS files are made in the data dir.
    agent_listen: str | None = None
    agent_rate_limit: RateLimit = field(default_factory=RateLimit)


class Standalone:
    def __init__(
        self, options: StandaloneOptions, provisioners: ProvisionerFactory | None = None
    ) -> None:
        self.options = options
        self.provisioners = provisioners
        self.ready = anyio.Event()
        self.url = ""
        self.kubeconfig = options.data_dir / "kubeconfig"
        self.operator: Operator | None = None
        self.agent_url = ""
        self.agent_ca: Path | None = None  # the CA agents must trust

    def _crd_folder(self) -> Path:
        """The project's CRDs, written for the API server to preload (always current)."""
        folder = self.options.data_dir / "crds"
        folder.mkdir(parents=True, exist_ok=True)
        for name, crd in all_crds().items():
            (folder / name).write_text(render(crd))
        return folder

    def _agent_api_options(self) -> AgentApiOptions | None:
        """The operator's agent API options, with TLS files generated in the data directory
        (kept across restarts, so agents keep trusting the CA)."""
        options = self.options
        if options.agent_listen is None:
            given = options.operator.agent_api  # e.g. the lab's (`--lab DIR`)
            self.agent_ca = given.ca_file if given is not None else None
            return given
        host, _ = parse_listen(options.agent_listen)
        tls = ensure_tls(options.data_dir, host)
        self.agent_ca = tls.ca_cert
        return AgentApiOptions(
            listen=options.agent_listen,
            cert_file=tls.cert,
            key_file=tls.key,
            ca_file=tls.ca_cert,
            rate_limit=options.agent_rate_limit,
        )

    async def run(self, stop: anyio.Event) -> None:
        options = self.options
        options.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        server = ApiServerProcess.start(
            options.data_dir, options.host, options.port, self._crd_folder()
        )
        try:
            await self._run(server, stop)
        except anyio.get_cancelled_exc_class():
            server.kill()  # a forced stop (a second Ctrl-C): no grace for the server either
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await server.stop()

    async def _run(self, server: ApiServerProcess, stop: anyio.Event) -> None:
        options = self.options
        self.url = await server.wait_ready()
        self.kubeconfig = options.data_dir / "kubeconfig"
        operator_options = replace(
            options.operator,
            kubeconfig=str(self.kubeconfig),
            fixture_state=options.operator.fixture_state
            or options.data_dir / "fixture-hardware.json",
            agent_api=self._agent_api_options(),
        )
        self.operator = Operator(operator_options, self.provisioners)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.watch)
            operator_stop = anyio.Event()
            async with anyio.create_task_group() as operator_group:
                operator_group.start_soon(self.operator.run, operator_stop)
                await self.operator.started.wait()
                self.agent_url = self.operator.agent_url
                self.ready.set()
                await stop.wait()
                operator_stop.set()  # the operator drains while the API server still serves
            tg.cancel_scope.cancel()


class ApiServerError(RuntimeError):
    """The API server child did not start, or ended while in use (its output says why)."""


class ApiServerProcess:
    """`metal3 apiserver` as a child: serving on a socket bound here, saying on a pipe when it
    serves; in a process group of its own, so a Ctrl-C at a terminal reaches only this process,
    which stops the operator first (it drains through the server) and the server last."""

    STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL (its graceful shutdown takes 2)
    BIND_WAIT = 5.0  # seconds to wait for a port the server killed with us may still hold

    def __init__(self, process: subprocess.Popen[bytes], ready: int) -> None:
        self.process = process
        self._ready = ready
        self._stopping = False

    @classmethod
    def start(cls, data_dir: Path, host: str, port: int, crds: Path) -> ApiServerProcess:
        """Start it; call from the thread that lives as long as this process (the kernel
        kills the child when the thread that started it ends: `die_with_parent`)."""
        sock = cls._listen(host, port)
        ready_read, ready_write = os.pipe()
        host_text = f"[{host}]" if ":" in host else host
        argv = [
            sys.executable, "-m", "metal3", "apiserver",
            "--data-dir", str(data_dir),
            "--listen", f"{host_text}:{sock.getsockname()[1]}",
            "--crds", str(crds),
            "--listen-fd", str(sock.fileno()),
            "--ready-fd", str(ready_write),
        ]  # fmt: skip
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                pass_fds=(sock.fileno(), ready_write),
                preexec_fn=die_with_parent,
                process_group=0,
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            sock.close()  # the child has its own copy
            os.close(ready_write)
        log.debug("API server: pid %d", process.pid)
        return cls(process, ready_read)

    @classmethod
    def _listen(cls, host: str, port: int) -> socket.socket:
        """`listening_socket`, waiting up to `BIND_WAIT` for a fixed port to be free: after
        a SIGKILL of standalone, the kernel kills its server, whose socket may outlive the
        restart's first bind by a moment."""
        deadline = time.monotonic() + cls.BIND_WAIT
        while True:
            try:
                return listening_socket(host, port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or port == 0 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    async def wait_ready(self) -> str:
        """Its URL, once it serves; `ApiServerError` if it ended first."""
        line = await anyio.to_thread.run_sync(self._read_ready, abandon_on_cancel=True)
        if not line:
            code = await anyio.to_thread.run_sync(self.process.wait)
            raise ApiServerError(f"the API server did not start (exit code {code})")
        return line

    def _read_ready(self) -> str:
        try:
            with open(self._ready, "rb") as ready:  # closes the descriptor
                return ready.readline().decode().strip()
        except OSError:
            return ""

    async def watch(self) -> None:
        """Return never; `ApiServerError` if the server ends without being stopped."""
        code = await anyio.to_thread.run_sync(self.process.wait, abandon_on_cancel=True)
        if not self._stopping:
            raise ApiServerError(f"the API server ended (exit code {code})")

    async def stop(self) -> None:
        """SIGTERM, and SIGKILL after `STOP_GRACE` seconds; waits for it to end."""
        self._stopping = True
        await anyio.to_thread.run_sync(self._stop)

    def kill(self) -> None:
        self._stopping = True
        if self.process.poll() is None:
            self.process.kill()

    def _stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.warning(
                    "API server pid %d: no exit after SIGTERM; killing it", self.process.pid
                )
                self.process.kill()
                self.process.wait()


def temporary_data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="metal3-standalone-"))
