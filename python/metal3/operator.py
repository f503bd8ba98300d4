"""The operator process: the manager with the BareMetalHost controller and a provisioner, and,
when asked, the agent API (`metal3.agentapi`) the hosts' agents dial into.

The provisioner is the direct one by default (`metal3.provisioner.direct`: the hosts' BMCs and
the metal3 agent), or the fixture (simulated hardware). Its background work runs in the
operator's task group for the operator's lifetime; an agent's result and the end of a
background BMC call both put the host on the controller's queue at once.

The claim controllers (HostClaim, Metal3Machine: `metal3.claims`) share one claim engine; each
runs only when the API server serves its CRDs (a cluster without Cluster API's provider CRD
simply has no Metal3Machine controller).

`metal3 operator` (against any API server) and `metal3 standalone` (with the embedded one) both
run an :class:`Operator`; tests run it in-process to stop and restart it at will.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from metal3.agentapi.app import AgentApi
from metal3.agentapi.server import AgentApiOptions, AgentServer
from metal3.claims.engine import ClaimEngine
from metal3.claims.hostclaim import HostClaimReconciler
from metal3.claims.metal3machine import (
    Metal3MachineReconciler,
    Metal3MachineSettings,
    resource_served,
)
from metal3.controllers.baremetalhost import BareMetalHostReconciler, Settings
from metal3.discovery.configmap import DiscoveryConfigMap
from metal3.discovery.service import DiscoveryOptions
from metal3.kube.client import KubeClient
from metal3.kube.events import EventRecorder, EventSource
from metal3.kube.manager import Manager, ManagerOptions
from metal3.kube.resources import BAREMETALHOSTS, HOSTCLAIMS, HOSTDEPLOYPOLICIES, METAL3MACHINES
from metal3.provisioner import PROVISIONERS
from metal3.provisioner.base import ProvisionerFactory, ProvisionerServices
from metal3.provisioner.direct.settings import DirectSettings
from metal3.provisioner.fixture import FixtureProvisionerFactory, FixtureWorld

log = logging.getLogger(__name__)


def default_concurrency() -> int:
    return max(2, min(os.cpu_count() or 2, 8))


@dataclass
class OperatorOptions:
    kubeconfig: str | None = None
    namespace: str | None = None
    concurrency: int = field(default_factory=default_concurrency)
    provisioner: str = "direct"
    fixture_state: Path | None = None  # where the fixture provisioner keeps its hardware
    direct: DirectSettings = field(default_factory=DirectSettings)  # the direct provisioner's
    health_address: str | None = "127.0.0.1:0"
    leader_elect: bool = False
    leader_election_namespace: str = "default"
    grace_period: float = 30.0
    settings: Settings = field(default_factory=Settings)
    agent_api: AgentApiOptions | None = None  # serve the agent API (None: not at all)
    # Discovery of unknown hosts through the agent API (None: off; needs agent_api).
    discovery: DiscoveryOptions | None = None
    # NAMESPACE/NAME of a ConfigMap whose settings override `discovery`, watched.
    discovery_configmap: str | None = None


def make_provisioners(options: OperatorOptions) -> ProvisionerFactory:
    if options.provisioner == "direct":
        from metal3.provisioner.direct.factory import DirectProvisionerFactory

        return DirectProvisionerFactory(options.direct)
    if options.provisioner == "fixture":
        return FixtureProvisionerFactory(FixtureWorld(options.fixture_state))
    raise ValueError(f"unknown provisioner {options.provisioner!r}; choose from {PROVISIONERS}")


class Operator:
    def __init__(
        self, options: OperatorOptions, provisioners: ProvisionerFactory | None = None
    ) -> None:
        self.options = options
        self.provisioners = provisioners or make_provisioners(options)
        self.manager: Manager | None = None
        self.reconciler: BareMetalHostReconciler | None = None
        self.claim_engine: ClaimEngine | None = None
        self.metal3machines: Metal3MachineReconciler | None = None
        self.hostclaims: HostClaimReconciler | None = None
        self.agent_api: AgentApi | None = None
        self.agent_url = ""  # https://HOST:PORT of the agent API, once bound
        self.started = anyio.Event()

    async def run(self, stop: anyio.Event) -> None:
        """Run until ``stop`` is set; in-flight reconciles finish within the grace period."""
        options = self.options
        identity = f"{socket.gethostname()}_{os.getpid()}_{id(self):x}"
        async with await KubeClient.connect(options.kubeconfig) as client:
            manager = Manager(
                client,
                ManagerOptions(
                    namespace=options.namespace,
                    health_address=options.health_address,
                    grace_period=options.grace_period,
                    leader_election=options.leader_elect,
                    leader_election_namespace=options.leader_election_namespace,
                    identity=identity,
                ),
            )
            recorder = EventRecorder(
                client,
                EventSource(
                    component="metal3-baremetal-controller",
                    reporting_controller="metal3.io/baremetal-controller",
                    instance=identity,
                ),
            )
            self.reconciler = BareMetalHostReconciler(
                client,
                manager,
                self.provisioners,
                recorder,
                settings=options.settings,
                workers=options.concurrency,
            )
            self.claim_engine = ClaimEngine(client, manager.informer(BAREMETALHOSTS))
            self.metal3machines = await self._metal3machines(client, manager, self.claim_engine)
            self.hostclaims = await self._hostclaims(client, manager, self.claim_engine, recorder)
            self.manager = manager
            agent_server = self._agent_server(client) if options.agent_api else None
            services = ProvisionerServices(
                client=client, wake=self._wake, agent_api=agent_server is not None
            )
            self.started.set()
            async with anyio.create_task_group() as tg:
                await tg.start(self._run_provisioners, services)
                tg.start_soon(recorder.run)
                agent_stopped = anyio.Event()
                if agent_server is not None:
                    tg.start_soon(agent_server.app.run)
                    if options.discovery_configmap is not None:
                        tg.start_soon(self._discovery_configmap(client, agent_server.app).run)
                    tg.start_soon(_serve_until, agent_server, stop, agent_stopped)
                await manager.run(stop)
                if agent_server is not None:
                    agent_server.stop()
                    with anyio.move_on_after(5):
                        await agent_stopped.wait()
                tg.cancel_scope.cancel()

    async def _metal3machines(
        self, client: KubeClient, manager: Manager, engine: ClaimEngine
    ) -> Metal3MachineReconciler | None:
        """The Metal3Machine controller, unless the API server lacks its CRD."""
        options = self.options
        if not await resource_served(client, METAL3MACHINES, options.namespace or ""):
            log.info("Metal3Machines are not served (no CRD): no Metal3Machine controller")
            return None
        settings = Metal3MachineSettings(
            max_provisioning_retries=options.settings.max_provisioning_retries
        )
        return Metal3MachineReconciler(
            client, manager, engine, settings=settings, workers=options.concurrency
        )

    async def _hostclaims(
        self, client: KubeClient, manager: Manager, engine: ClaimEngine, recorder: EventRecorder
    ) -> HostClaimReconciler | None:
        """The HostClaim controller, unless the API server lacks the HostClaim or
        HostDeployPolicy CRD."""
        namespace = self.options.namespace or ""
        for resource in (HOSTCLAIMS, HOSTDEPLOYPOLICIES):
            if not await resource_served(client, resource, namespace):
                log.info("%s are not served (no CRD): no HostClaim controller", resource.plural)
                return None
        return HostClaimReconciler(
            client, manager, engine, recorder, workers=self.options.concurrency
        )

    def _agent_server(self, client: KubeClient) -> AgentServer:
        """The agent API, bound now (a busy port fails the start, not a later request)."""
        options = self.options.agent_api
        assert options is not None
        self.agent_api = AgentApi(
            client,
            namespace=self.options.namespace,
            rate_limit=options.rate_limit,
            on_result=self._agent_result,
            poll_seconds=options.poll_seconds,
            # The direct provisioner boots the agent and says so in the host's agent record.
            agent_boot_required=self.options.provisioner == "direct",
            discovery=self.options.discovery,
        )
        server = AgentServer(options, self.agent_api)
        self.agent_url = server.url
        return server

    def _discovery_configmap(self, client: KubeClient, api: AgentApi) -> DiscoveryConfigMap:
        options = self.options
        assert options.discovery_configmap is not None
        return DiscoveryConfigMap(
            client, api.discovery, options.discovery_configmap, options.discovery, options.namespace
        )

    async def _run_provisioners(
        self, services: ProvisionerServices, *, task_status: TaskStatus[None]
    ) -> None:
        await self.provisioners.run(services, task_status=task_status)

    def _wake(self, namespace: str, name: str) -> None:
        """Reconcile the host now (on the BareMetalHost controller's queue, which runs it at
        once even when a later requeue is pending)."""
        if self.reconciler is not None:
            self.reconciler.controller.enqueue((namespace, name))

    def _agent_result(self, namespace: str, name: str) -> None:
        """An agent reported a result: reconcile its host now rather than at its next poll."""
        self._wake(namespace, name)


async def _serve_until(server: AgentServer, stop: anyio.Event, stopped: anyio.Event) -> None:
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            await stop.wait()
            server.stop()
    finally:
        stopped.set()
