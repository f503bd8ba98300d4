"""Shared test configuration: async tests run on asyncio through anyio's pytest plugin; loop
devices for the tests that need real block devices."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loopdev import LoopDevices

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[LoopDevices]:
    """Makes loop devices over files in the test's tmp_path (`new`, `attach`); every one is
    detached at teardown, whether the test passed or not. Fails, never falls back to a plain
    file, when loop devices cannot be made."""
    devices = LoopDevices(tmp_path)
    try:
        yield devices
    finally:
        devices.close()
