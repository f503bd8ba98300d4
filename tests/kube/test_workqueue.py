"""The work queue's guarantees, which level-triggered reconciling relies on."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from metal3.kube.workqueue import ShutDown, WorkQueue

pytestmark = pytest.mark.anyio


async def test_a_waiting_key_is_queued_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert await queue.get() == "a"
    assert await queue.get() == "b"


async def test_a_key_added_while_processing_waits_for_done() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")  # changed again while a worker has it
    assert len(queue) == 0, "must not be handed to a second worker"
    queue.done(key)
    assert len(queue) == 1
    assert await queue.get() == "a"


async def test_never_two_workers_on_one_key() -> None:
    queue: WorkQueue[int] = WorkQueue()
    active: set[int] = set()
    overlaps = 0
    handled = 0

    async def worker() -> None:
        nonlocal overlaps, handled
        while True:
            try:
                key = await queue.get()
            except ShutDown:
                return
            if key in active:
                overlaps += 1
            active.add(key)
            await anyio.sleep(0.001)
            active.discard(key)
            handled += 1
            queue.done(key)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(worker)
        for round_ in range(200):
            queue.add(round_ % 5)
            await anyio.lowlevel.checkpoint()
        while len(queue) or queue.processing:
            await anyio.sleep(0.01)
        queue.shut_down()
    assert overlaps == 0
    assert 5 <= handled <= 200


async def test_add_after_and_rate_limited_backoff() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay=0.02, max_delay=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.run_timers)
        start = anyio.current_time()
        queue.add_after("later", 0.1)
        queue.add_after("later", 0.5)  # the earlier due time wins
        assert await queue.get() == "later"
        assert 0.09 <= anyio.current_time() - start < 0.4
        queue.done("later")
        delays = [queue.backoff(n) for n in range(6)]
        assert delays == [0.02, 0.04, 0.08, 0.16, 0.2, 0.2]
        queue.add_rate_limited("flaky")
        queue.add_rate_limited("flaky")
        assert queue.failures("flaky") == 2
        queue.forget("flaky")
        assert queue.failures("flaky") == 0
        assert await queue.get() == "flaky"
        queue.shut_down()
        with pytest.raises(ShutDown):
            await queue.get()
        tg.cancel_scope.cancel()


async def test_shutdown_wakes_idle_workers() -> None:
    queue: WorkQueue[str] = WorkQueue()
    stopped = 0

    async def worker() -> None:
        nonlocal stopped
        with pytest.raises(ShutDown):
            await queue.get()
        stopped += 1

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(worker)
        await anyio.sleep(0.01)
        queue.shut_down()
    assert stopped == 3
