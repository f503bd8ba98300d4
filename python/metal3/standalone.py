"""Standalone mode: the embedded API server and the operator in one process.

For a first cluster's hosts (no Kubernetes yet), the demo, and anyone without a cluster: the
project's CRDs are installed on start, `DIR/kubeconfig` lets kubectl manage the hosts, and a
restart on the same directory carries on where it stopped (the store, and with the fixture
provisioner its simulated hardware, are kept in the directory; the direct provisioner keeps
nothing of its own: the hosts' BMCs and the API store hold its state).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio

from metal3.agentapi.ratelimit import RateLimit
from metal3.agentapi.server import AgentApiOptions, ensure_tls, parse_listen
from metal3.api.crd import all_crds, render
from metal3.apiserver.server import ServerConfig, prepare
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
        options.data_dir.mkdir(parents=True, exist_ok=True)
        server = prepare(
            ServerConfig(
                data_dir=options.data_dir,
                host=options.host,
                port=options.port,
                crds=self._crd_folder(),
            )
        )
        self.url, self.kubeconfig = server.url, server.kubeconfig
        operator_options = replace(
            options.operator,
            kubeconfig=str(server.kubeconfig),
            fixture_state=options.operator.fixture_state
            or options.data_dir / "fixture-hardware.json",
            agent_api=self._agent_api_options(),
        )
        self.operator = Operator(operator_options, self.provisioners)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            while not server.server.started:  # noqa: ASYNC110 (uvicorn offers no event)
                await anyio.sleep(0.01)
            operator_stop = anyio.Event()
            async with anyio.create_task_group() as operator_group:
                operator_group.start_soon(self.operator.run, operator_stop)
                await self.operator.started.wait()
                self.agent_url = self.operator.agent_url
                self.ready.set()
                await stop.wait()
                operator_stop.set()  # the operator drains while the API server still serves
            server.server.should_exit = True


def temporary_data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="metal3-standalone-"))
