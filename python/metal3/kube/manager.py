"""The manager: runs the shared informers, the controllers and the health/metrics endpoint.

Start-up order: serve /healthz at once; with leader election, wait for the Lease; start the
informers and wait until every cache has listed (then /readyz answers 200); then start the
controllers. Shutdown (``stop`` set, e.g. by SIGTERM) runs it backwards: the controllers stop
taking keys and finish in-flight reconciles within the grace period, the informers' watches are
cancelled, and the lease is released.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import anyio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from metal3.kube.client import KubeClient
from metal3.kube.controller import Controller
from metal3.kube.informer import Informer
from metal3.kube.leader import LeaderElector
from metal3.kube.resources import Resource

log = logging.getLogger(__name__)


@dataclass
class ManagerOptions:
    namespace: str | None = None  # None: every namespace
    health_address: str | None = "127.0.0.1:0"  # host:port, or None for no endpoint
    grace_period: float = 30.0
    leader_election: bool = False
    leader_election_namespace: str = "default"
    leader_election_id: str = "metal3-operator"
    identity: str = ""


class Manager:
    def __init__(self, client: KubeClient, options: ManagerOptions) -> None:
        self.client = client
        self.options = options
        self.informers: dict[Resource, Informer] = {}
        self.controllers: list[Controller] = []
        self.ready = False
        self.health_port: int | None = None
        self.elector: LeaderElector | None = None
        self._started: list[Callable[[], None]] = []

    def informer(self, resource: Resource) -> Informer:
        """The shared informer for ``resource`` (created on first use)."""
        informer = self.informers.get(resource)
        if informer is None:
            informer = Informer(self.client, resource, self.options.namespace)
            self.informers[resource] = informer
        return informer

    def add_controller(self, controller: Controller) -> None:
        self.controllers.append(controller)

    # --- health and metrics --------------------------------------------------------------

    async def _serve_health(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        app = web.Application()

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            if self.ready:
                return web.Response(text="ok")
            return web.Response(status=503, text="caches not synced")

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        assert self.options.health_address is not None
        host, _, port = self.options.health_address.rpartition(":")
        site = web.TCPSite(runner, host or "127.0.0.1", int(port))
        await site.start()
        self.health_port = int(runner.addresses[0][1])
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            if self.options.health_address:
                await tg.start(self._serve_health)
            if self.options.leader_election:
                self.elector = LeaderElector(
                    self.client,
                    self.options.leader_election_namespace,
                    self.options.leader_election_id,
                    self.options.identity,
                )
                with anyio.CancelScope() as acquiring:
                    tg.start_soon(_cancel_when, stop, acquiring)
                    await self.elector.acquire()
                if acquiring.cancel_called:
                    tg.cancel_scope.cancel()
                    return
                tg.start_soon(self._renew, stop)
            async with anyio.create_task_group() as informers:
                for informer in self.informers.values():
                    informers.start_soon(informer.run)
                with anyio.CancelScope() as syncing:
                    tg.start_soon(_cancel_when, stop, syncing)
                    for informer in self.informers.values():
                        await informer.synced.wait()
                if syncing.cancel_called:  # stopped before the caches were filled
                    informers.cancel_scope.cancel()
                    tg.cancel_scope.cancel()
                    return
                self.ready = True
                log.info("caches synced; starting %d controller(s)", len(self.controllers))
                async with anyio.create_task_group() as controllers:
                    for controller in self.controllers:
                        controllers.start_soon(
                            partial(controller.serve, stop, grace_period=self.options.grace_period)
                        )
                informers.cancel_scope.cancel()
            self.ready = False
            if self.elector is not None:
                with anyio.CancelScope(shield=True):
                    await self.elector.release()
            tg.cancel_scope.cancel()

    async def _renew(self, stop: anyio.Event) -> None:
        assert self.elector is not None
        try:
            await self.elector.keep_renewing()
        except Exception:
            log.exception("leader election lost: stopping at once, without the grace period")
            # Another replica may lead from the lease's expiry on: reconciles still running here
            # past that would act on hosts beside it.
            for controller in self.controllers:
                controller.abort()
            stop.set()


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
