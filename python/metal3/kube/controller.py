"""A controller: a work queue of object keys drained by N workers calling one reconcile function.

Reconciling is level-triggered: the function gets only the key, reads the current state from the
informer caches, and makes the world match. Its :class:`Result` says when to look again; an
exception, or a result asking for ``backoff``, requeues the key with per-key exponential backoff
that keeps growing until a reconcile of that key succeeds. On shutdown the queue stops handing
out keys and in-flight reconciles get a grace period to finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.lowlevel
from prometheus_client import Counter, Gauge, Histogram

from metal3.kube.informer import ObjectKey
from metal3.kube.workqueue import ShutDown, WorkQueue

log = logging.getLogger(__name__)

RECONCILE_TOTAL = Counter(
    "controller_runtime_reconcile_total", "Reconciles by result", ["controller", "result"]
)
RECONCILE_TIME = Histogram(
    "controller_runtime_reconcile_time_seconds",
    "Time per reconcile",
    ["controller"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Gauge("workqueue_depth", "Keys waiting", ["name"])
ACTIVE_WORKERS = Gauge("controller_runtime_active_workers", "Busy workers", ["controller"])


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for next: nothing, or another look after ``requeue_after`` s.

    ``backoff``: the reconcile failed without raising (e.g. the API refused a write it will
    refuse again): look again after the queue's per-key backoff, which this does not reset, so
    a failure that repeats is retried less and less often instead of in a hot loop.
    """

    requeue_after: float | None = None
    backoff: bool = False


Reconcile = Callable[[ObjectKey], Awaitable[Result]]


class Controller:
    def __init__(self, name: str, reconcile: Reconcile, *, workers: int = 2) -> None:
        self.name = name
        self.reconcile = reconcile
        self.workers = max(1, workers)
        self.queue: WorkQueue[ObjectKey] = WorkQueue()
        self.reconciles = 0
        self.errors = 0
        self._workers_scope: anyio.CancelScope | None = None

    def enqueue(self, key: ObjectKey) -> None:
        self.queue.add(key)

    async def _work(self) -> None:
        while True:
            # A reconcile that never waits on I/O (work done, key requeued at once) must not
            # starve the informers and everything else on the loop: yield on every key.
            await anyio.lowlevel.checkpoint()
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            ACTIVE_WORKERS.labels(self.name).inc()
            started = time.perf_counter()
            try:
                result = await self.reconcile(key)
            except Exception:
                self.errors += 1
                RECONCILE_TOTAL.labels(self.name, "error").inc()
                log.exception("%s: reconciling %s/%s failed", self.name, *key)
                self.queue.add_rate_limited(key)
            else:
                self._requeue(key, result)
            finally:
                self.reconciles += 1
                RECONCILE_TIME.labels(self.name).observe(time.perf_counter() - started)
                ACTIVE_WORKERS.labels(self.name).dec()
                self.queue.done(key)
                QUEUE_DEPTH.labels(self.name).set(len(self.queue))

    def _requeue(self, key: ObjectKey, result: Result) -> None:
        if result.backoff:
            RECONCILE_TOTAL.labels(self.name, "requeue").inc()
            self.queue.add_rate_limited(key)
            return
        self.queue.forget(key)  # success: the next failure starts from the shortest delay
        if result.requeue_after is not None:
            RECONCILE_TOTAL.labels(self.name, "requeue_after").inc()
            self.queue.add_after(key, result.requeue_after)
        else:
            RECONCILE_TOTAL.labels(self.name, "success").inc()

    def abort(self) -> None:
        """Cancel in-flight reconciles now, without the grace period: for a replica that lost
        its leadership, whose reconciles could otherwise overlap the new leader's."""
        if self._workers_scope is not None:
            self._workers_scope.cancel()

    async def serve(self, stop: anyio.Event, *, grace_period: float = 30.0) -> None:
        """Work until ``stop`` is set (or this task is cancelled), then drain: the queue hands
        out no more keys and in-flight reconciles get ``grace_period`` seconds to finish."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.queue.run_timers)
            workers_scope = self._workers_scope = anyio.CancelScope(shield=True)

            async def run_workers() -> None:
                with workers_scope:
                    async with anyio.create_task_group() as workers:
                        for _ in range(self.workers):
                            workers.start_soon(self._work)
                tg.cancel_scope.cancel()  # every worker returned: stop the timers too

            tg.start_soon(run_workers)
            try:
                await stop.wait()
            finally:
                self.queue.shut_down()
                workers_scope.deadline = anyio.current_time() + grace_period
