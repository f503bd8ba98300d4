"""Operator tests run against a real `metal3 apiserver` process (the project's CRDs preloaded),
with the operator itself in-process so a test can stop and restart it at any point."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiserver.apiserver_kit import ServerProcess
from baremetalhost.kit import REPO
from metal3.kube.resources import NAMESPACES


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("operator-apiserver")
    server = ServerProcess(tmp / "data", REPO / "crds", [])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(apiserver: ServerProcess) -> Path:
    return apiserver.kubeconfig


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


__all__ = ["NAMESPACES"]
