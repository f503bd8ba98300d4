"""A replica that loses its leadership stops its reconciles at once: the grace period that a
normal shutdown gives in-flight reconciles would let them overlap the new leader's."""

from __future__ import annotations

import anyio
import pytest

from metal3.kube.controller import Controller, Result
from metal3.kube.informer import ObjectKey

pytestmark = pytest.mark.anyio

KEY: ObjectKey = ("ns", "host")


async def _serve_with_a_stuck_reconcile(*, abort: bool, grace: float) -> tuple[bool, float]:
    """Serve with a reconcile that never ends, stop it with a grace period (aborting or not),
    and say whether the reconcile was cancelled and how long serve took to return."""
    started = anyio.Event()
    cancelled = False

    async def reconcile(key: ObjectKey) -> Result:
        nonlocal cancelled
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled = True
            raise
        return Result()

    controller = Controller("stuck", reconcile, workers=1)
    stop = anyio.Event()
    returned_after = float("inf")
    with anyio.move_on_after(grace + 5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: controller.serve(stop, grace_period=grace))
            controller.enqueue(KEY)
            await started.wait()
            began = anyio.current_time()
            if abort:
                controller.abort()
            stop.set()
        returned_after = anyio.current_time() - began
    return cancelled, returned_after


async def test_abort_cancels_in_flight_reconciles_without_the_grace_period() -> None:
    cancelled, returned_after = await _serve_with_a_stuck_reconcile(abort=True, grace=60.0)
    assert cancelled
    assert returned_after < 5


async def test_a_normal_stop_waits_for_the_grace_period() -> None:
    """The control: without abort the same reconcile runs until the grace period ends."""
    cancelled, returned_after = await _serve_with_a_stuck_reconcile(abort=False, grace=2.0)
    assert cancelled  # by the grace period's deadline, not by the test's outer limit:
    assert 2.0 <= returned_after != float("inf")
