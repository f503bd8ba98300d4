"""The controller's requeue rules: a reconcile that fails (raising, or answering ``backoff``) is
retried after the work queue's per-key backoff, which keeps growing until the key succeeds."""

from __future__ import annotations

import anyio
import pytest

from metal3.kube.controller import Controller, Result
from metal3.kube.informer import ObjectKey

pytestmark = pytest.mark.anyio

KEY: ObjectKey = ("ns", "host")


async def run_until(controller: Controller, done: anyio.Event) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(controller.serve, stop)
        controller.enqueue(KEY)
        with anyio.fail_after(10):
            await done.wait()
        stop.set()


async def test_backoff_results_grow_the_delay_until_a_success() -> None:
    """Each ``backoff`` answer counts one more failure (the queue's delay doubles with each);
    only a success resets the count. The bug this guards against: a failure answered with an
    immediate requeue reset the count every time, retrying a permanent error in a hot loop."""
    seen_failures: list[int] = []
    done = anyio.Event()
    controller: Controller

    async def reconcile(key: ObjectKey) -> Result:
        seen_failures.append(controller.queue.failures(key))
        if len(seen_failures) <= 5:
            return Result(backoff=True)
        if len(seen_failures) == 6:
            return Result(requeue_after=0.0)  # a success that asks for another look
        done.set()
        return Result()

    controller = Controller("test", reconcile, workers=1)
    await run_until(controller, done)
    assert seen_failures == [0, 1, 2, 3, 4, 5, 0]
    assert controller.queue.failures(KEY) == 0


async def test_exceptions_back_off_like_backoff_results() -> None:
    seen_failures: list[int] = []
    done = anyio.Event()
    controller: Controller

    async def reconcile(key: ObjectKey) -> Result:
        seen_failures.append(controller.queue.failures(key))
        if len(seen_failures) < 3:
            raise RuntimeError("boom")
        if len(seen_failures) < 5:
            return Result(backoff=True)
        done.set()
        return Result()

    controller = Controller("test", reconcile, workers=1)
    await run_until(controller, done)
    assert seen_failures == [0, 1, 2, 3, 4]
    assert controller.errors == 2
