"""BMC calls that never hold a reconcile worker for long.

A BMC that answers slowly (or not at all, until the driver's deadline) would hold the worker
reconciling its host for as long, and a few such BMCs would stall every other host. So each
BMC call runs as a task of the provisioner factory, not of the reconcile: the reconcile waits
for it at most ``wait`` seconds. A call done by then is answered as usual; a slower one goes
on in the background, the reconcile reports the host as in progress (`StillRunning`), and the
call's end wakes the host's reconcile, whose next request for the same call (same label) gets
the outcome without calling the BMC again. One call runs per host at a time (a BMC serves one
host's requests in order anyway); outcomes nobody took within ``fresh`` seconds are dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio

log = logging.getLogger(__name__)

T = TypeVar("T")

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class StillRunning(Exception):
    """The call outlived the reconcile's wait; it goes on, and its end wakes the host."""

    def __init__(self, label: str) -> None:
        super().__init__(f"the BMC call {label!r} is still running")
        self.label = label


@dataclass
class _Call:
    label: str
    done: anyio.Event = field(default_factory=anyio.Event)
    value: Any = None
    error: Exception | None = None
    finished_at: float = 0.0
    waiters: int = 0
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class BackgroundCalls:
    """One host's BMC calls (see the module doc)."""

    def __init__(
        self,
        spawn: Spawn,
        wake: Callable[[], None],
        *,
        wait: float,
        fresh: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spawn = spawn
        self._wake = wake
        self.wait = wait
        self.fresh = fresh
        self._clock = clock
        self._running: _Call | None = None
        self._finished: dict[str, _Call] = {}
        self._closed = False

    @property
    def busy(self) -> bool:
        """A call is on the BMC now."""
        return self._running is not None

    async def call(self, label: str, func: Callable[[], Awaitable[T]]) -> T:
        """The outcome of ``func`` (its value, or the exception it raised), run as the call
        ``label``: a finished call of that label is answered without running it again.
        Raises `StillRunning` when the call (or another one of this host's before it) is not
        done within the wait."""
        self._drop_stale()
        finished = self._finished.pop(label, None)
        if finished is not None:
            return cast(T, finished.outcome())
        with anyio.move_on_after(self.wait):
            running = self._running
            if running is not None and running.label != label:
                await self._await(running)  # our turn comes after it
            if self._running is None:
                self._start(label, func)
            running = self._running
            assert running is not None
            await self._await(running)
        finished = self._finished.pop(label, None)
        if finished is None:
            raise StillRunning(label)
        return cast(T, finished.outcome())

    async def _await(self, call: _Call) -> None:
        call.waiters += 1
        try:
            await call.done.wait()
        finally:
            call.waiters -= 1

    def _start(self, label: str, func: Callable[[], Awaitable[Any]]) -> None:
        if self._closed:
            raise RuntimeError("the host's BMC session is closed")
        call = self._running = _Call(label)

        async def run() -> None:
            try:
                with call.scope:
                    try:
                        call.value = await func()
                    except Exception as exc:
                        call.error = exc
            finally:
                if call.scope.cancelled_caught:
                    call.error = RuntimeError(f"the BMC call {label!r} was cancelled")
                call.finished_at = self._clock()
                if self._running is call:
                    self._running = None
                if not self._closed:
                    self._finished[label] = call
                call.done.set()
                if call.waiters == 0 and not self._closed:
                    self._wake()  # the reconcile that asked gave up waiting: tell it

        self._spawn(run)

    def forget(self, label: str) -> None:
        """Drop a finished outcome of ``label`` nobody took: the next call of that label is a
        new request, not the continuation of one that outlived its reconcile (a boot of the
        agent for inspection, say, must never answer for the boot for cleaning after it)."""
        self._finished.pop(label, None)

    def take_failure(self, label: str) -> Exception | None:
        """The error of a finished call of ``label``, taken (None: it is still running, it
        succeeded, or nothing is known): for a step that stopped waiting for the call."""
        finished = self._finished.get(label)
        if finished is None or finished.error is None:
            return None
        del self._finished[label]
        return finished.error

    def _drop_stale(self) -> None:
        now = self._clock()
        for label in [k for k, c in self._finished.items() if now - c.finished_at > self.fresh]:
            log.debug("dropping the unclaimed outcome of %s", label)
            del self._finished[label]

    def close(self) -> None:
        """Cancel the call in flight (if any) and forget every outcome."""
        self._closed = True
        if self._running is not None:
            self._running.scope.cancel()
        self._finished.clear()
