"""BMC calls that never hold a reconcile: a call slower than the wait goes on in the
background, its end wakes the host, and the next request for it gets its outcome without
calling again. Real anyio tasks and time; the "BMC" is a coroutine that sleeps."""

from __future__ import annotations

import anyio
import pytest

from metal3.provisioner.direct.calls import BackgroundCalls, StillRunning

pytestmark = pytest.mark.anyio


async def test_a_slow_call_goes_on_in_the_background_and_wakes_the_host() -> None:
    woken: list[float] = []
    calls = 0

    async def slow_bmc() -> str:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.3)
        return "on"

    async with anyio.create_task_group() as tg:
        background = BackgroundCalls(
            tg.start_soon, lambda: woken.append(anyio.current_time()), wait=0.05
        )
        started = anyio.current_time()
        with pytest.raises(StillRunning):
            await background.call("power-state", slow_bmc)
        assert anyio.current_time() - started < 0.25  # the caller was let go early
        assert background.busy
        # Asked again while it runs: it is not started a second time.
        with pytest.raises(StillRunning):
            await background.call("power-state", slow_bmc)
        with anyio.fail_after(5):
            while not woken:
                await anyio.sleep(0.01)
        assert woken[0] - started >= 0.3
        assert not background.busy
        assert await background.call("power-state", slow_bmc) == "on"
        assert calls == 1
        # Taken: the next request is a new call.
        with pytest.raises(StillRunning):
            await background.call("power-state", slow_bmc)
        assert calls == 2
        tg.cancel_scope.cancel()


async def test_quick_calls_answer_at_once_and_errors_come_back() -> None:
    woken: list[None] = []

    async def fails() -> None:
        raise ValueError("refused by the BMC")

    async def quick() -> int:
        return 7

    async with anyio.create_task_group() as tg:
        background = BackgroundCalls(tg.start_soon, lambda: woken.append(None), wait=1.0)
        assert await background.call("quick", quick) == 7
        with pytest.raises(ValueError, match="refused by the BMC"):
            await background.call("fails", fails)
        assert woken == []  # someone was waiting each time: no wake-up needed
        tg.cancel_scope.cancel()


async def test_one_call_at_a_time_and_close_cancels_it() -> None:
    order: list[str] = []

    async def first() -> None:
        order.append("first starts")
        await anyio.sleep(0.2)
        order.append("first ends")

    async def second() -> None:
        order.append("second starts")

    async def forever() -> None:
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        background = BackgroundCalls(tg.start_soon, lambda: None, wait=0.05)
        with pytest.raises(StillRunning):
            await background.call("first", first)
        # Another call waits for the one on the BMC; within its wait it does not even start.
        with pytest.raises(StillRunning):
            await background.call("second", second)
        assert order == ["first starts"]
        with anyio.fail_after(5):
            await anyio.sleep(0.3)
            await background.call("second", second)
        assert order == ["first starts", "first ends", "second starts"]
        with pytest.raises(StillRunning):
            await background.call("hangs", forever)
        background.close()
        with anyio.fail_after(5):
            while background.busy:
                await anyio.sleep(0.01)
        with pytest.raises(RuntimeError, match="closed"):
            await background.call("after", second)
        tg.cancel_scope.cancel()
