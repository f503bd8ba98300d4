"""Shared test configuration: async tests run on asyncio through anyio's pytest plugin; loop
devices for the tests that need real block devices; a real `metal3 apiserver` process (the
project's CRDs preloaded, one per test module) for the tests that need an API server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiserver.apiserver_kit import ServerProcess
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


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("apiserver") / "data", REPO / "crds", [])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(apiserver: ServerProcess) -> Path:
    return apiserver.kubeconfig


@pytest.fixture
def namespace() -> str:
    """A fresh namespace name per test, so tests sharing a module's server never collide."""
    return f"t-{uuid.uuid4().hex[:8]}"
