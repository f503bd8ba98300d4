"""The direct provisioner's tests run against a real `metal3 apiserver` process, real BMC
emulators (sushy-tools, our IPMI simulator), loop devices and an image server on 127.0.0.1;
the operator runs in-process (or as a process, to be killed) and the test plays the hosts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiserver.apiserver_kit import ServerProcess
from provisioner.harness import REPO


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("provisioner-apiserver") / "data", REPO / "crds", []
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(apiserver: ServerProcess) -> Path:
    return apiserver.kubeconfig


@pytest.fixture
def namespace() -> str:
    return f"p-{uuid.uuid4().hex[:8]}"
