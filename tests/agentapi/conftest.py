"""The agent API's tests run against a real `metal3 apiserver` process (the project's CRDs
preloaded); the agent API itself runs in-process, over TLS on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiserver.apiserver_kit import ServerProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("agentapi-apiserver") / "data", REPO / "crds", []
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(apiserver: ServerProcess) -> Path:
    return apiserver.kubeconfig


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"
