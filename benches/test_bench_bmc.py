"""BMC driver overhead and fan-out, against sushy-tools' Redfish emulator on 127.0.0.1.

- per-call overhead: our async power-state read (lock, worker thread, error mapping) over the
  raw sushy call it wraps (`system.refresh(force=True); system.power_state`) on the same
  emulator and system, measured interleaved in this process; the ratio is what to watch
  (target <= 1.2x);
- fan-out: power-state reads of N systems at once (N=100, quick mode 10), one driver per
  system as the operator has one per host, through the shared worker-thread limiter.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.from_thread
import pytest
import sushy

from metal3.bmc.address import parse_address
from metal3.bmc.credentials import Credentials
from metal3.bmc.emulators import SushyEmulator, fake_systems
from metal3.bmc.interface import PowerState
from metal3.bmc.redfish import RedfishBMC

QUICK = os.environ.get("METAL3_BENCH_QUICK") == "1"
SYSTEMS = 10 if QUICK else 100
BATCH = 5 if QUICK else 40
ROUNDS = 3 if QUICK else 15
USER, PASSWORD = "bench", "bench-pw"


@pytest.fixture(scope="module")
def emulator() -> Iterator[SushyEmulator]:
    with SushyEmulator(
        fake_systems(SYSTEMS, prefix="bench", drives=0), users={USER: PASSWORD}
    ) as emu:
        yield emu


@pytest.fixture(scope="module")
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal() as blocking_portal:
        yield blocking_portal


def test_power_read_overhead_vs_raw_sushy(
    benchmark: Any, emulator: SushyEmulator, portal: anyio.from_thread.BlockingPortal
) -> None:
    system = emulator.systems[0]
    raw_root = sushy.Sushy(emulator.url, username=USER, password=PASSWORD)
    raw_system = raw_root.get_system(system.path)
    bmc = RedfishBMC(parse_address(emulator.address(system)), Credentials(USER, PASSWORD))

    def raw_batch() -> Any:
        state = None
        for _ in range(BATCH):
            raw_system.refresh(force=True)
            state = raw_system.power_state
        return state

    async def ours_batch() -> PowerState:
        state = PowerState.UNKNOWN
        for _ in range(BATCH):
            state = await bmc.power_state()
        return state

    def ours() -> PowerState:
        return portal.call(ours_batch)

    ours()  # connect once, as a long-lived driver is
    raw_times, our_times = [], []
    for _ in range(ROUNDS):  # interleaved, so both see the same machine load
        start = time.perf_counter()
        raw_state = raw_batch()
        raw_times.append((time.perf_counter() - start) / BATCH)
        start = time.perf_counter()
        our_state = ours()
        our_times.append((time.perf_counter() - start) / BATCH)
    assert our_state.value == raw_state.value.lower()
    raw_median, our_median = statistics.median(raw_times), statistics.median(our_times)
    ratio = our_median / raw_median
    benchmark.extra_info.update(
        raw_ms=round(raw_median * 1e3, 3), ours_ms=round(our_median * 1e3, 3), ratio=round(ratio, 3)
    )
    print(
        f"\npower read: raw sushy {raw_median * 1e3:.2f} ms, metal3 {our_median * 1e3:.2f} ms, "
        f"ratio {ratio:.3f} (target <= 1.2)"
    )
    assert benchmark(ours) == our_state
    portal.call(bmc.aclose)


def test_concurrent_power_reads(
    benchmark: Any, emulator: SushyEmulator, portal: anyio.from_thread.BlockingPortal
) -> None:
    creds = Credentials(USER, PASSWORD)
    bmcs = [RedfishBMC(parse_address(emulator.address(s)), creds) for s in emulator.systems]

    async def read_all() -> list[PowerState]:
        results: list[PowerState] = [PowerState.UNKNOWN] * len(bmcs)
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, len(bmcs))

        async def one(index: int) -> None:
            results[index] = await bmcs[index].power_state()

        async with anyio.create_task_group() as group:
            for index in range(len(bmcs)):
                group.start_soon(one, index)
        return results

    portal.call(read_all)  # connect every driver first
    start = time.perf_counter()
    states = portal.call(read_all)
    elapsed = time.perf_counter() - start
    assert states == [PowerState.OFF] * len(bmcs)
    rate = len(bmcs) / elapsed
    print(f"\n{len(bmcs)} concurrent power reads: {elapsed * 1e3:.1f} ms ({rate:.0f}/s)")
    benchmark.extra_info.update(systems=len(bmcs), reads_per_second=round(rate))
    assert benchmark(lambda: portal.call(read_all)) == states

    async def close_all() -> None:
        for bmc in bmcs:
            await bmc.aclose()

    portal.call(close_all)
