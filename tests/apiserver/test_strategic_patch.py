"""Strategic merge patches that kubectl itself sends to the server, with a current kubectl and
kubectl 1.20: `kubectl patch --type strategic` on Secrets, ConfigMaps and Namespaces, and the
three-way patch `kubectl apply` computes (with `$setElementOrder` and
`$deleteFromPrimitiveList`). The expected lists follow upstream's merge rules: items the patch
names come first in patch order unless `$setElementOrder` says otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apiserver_kit import ServerProcess, current_kubectl, old_kubectl
from kubernetes import client


@dataclass
class Kubectl:
    binary: str
    release: str
    kubeconfig: Path
    home: Path

    def run(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [self.binary, f"--cache-dir={self.home}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.home)},
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        assert "warning" not in done.stderr.lower(), done.stderr
        return done.stdout

    def patch(self, kind: str, name: str, namespace: str | None, body: dict[str, Any]) -> str:
        where = ["-n", namespace] if namespace else []
        return self.run("patch", kind, name, *where, "--type", "strategic", "-p", json.dumps(body))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        where = ["-n", namespace] if namespace else []
        result: dict[str, Any] = json.loads(self.run("get", kind, name, *where, "-o", "json"))
        return result


@pytest.fixture(scope="module", params=["current", "old"])
def kubectl(
    request: pytest.FixtureRequest, server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Kubectl:
    binary = current_kubectl() if request.param == "current" else old_kubectl()
    return Kubectl(binary, request.param, server.kubeconfig, tmp_path_factory.mktemp("kubectl"))


@pytest.fixture
def ns(api: client.ApiClient) -> Iterator[str]:
    """A namespace whose objects lose their finalizers before it is deleted."""
    name = f"sp-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    release = {"metadata": {"finalizers": None}}
    for item in core.list_namespaced_secret(name).items:
        core.patch_namespaced_secret(item.metadata.name, name, release)
    for item in core.list_namespaced_config_map(name).items:
        core.patch_namespaced_config_map(item.metadata.name, name, release)
    core.delete_namespace(name)


def make_secret(api: client.ApiClient, namespace: str, name: str, **meta: Any) -> None:
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": name, **meta},
            "data": {"a": "YQ==", "b": "Yg=="},
        },
    )


def test_patch_finalizers(kubectl: Kubectl, ns: str, api: client.ApiClient) -> None:
    make_secret(api, ns, "s", finalizers=["example.com/a", "example.com/b"])
    out = kubectl.patch("secret", "s", ns, {"metadata": {"finalizers": ["example.com/c"]}})
    assert "secret/s patched" in out
    meta = kubectl.get("secret", "s", ns)["metadata"]
    assert meta["finalizers"] == ["example.com/c", "example.com/a", "example.com/b"]

    again = kubectl.patch("secret", "s", ns, {"metadata": {"finalizers": ["example.com/a"]}})
    assert "patched (no change)" in again

    kubectl.patch(
        "secret",
        "s",
        ns,
        {"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a"]}},
    )
    assert kubectl.get("secret", "s", ns)["metadata"]["finalizers"] == [
        "example.com/c",
        "example.com/b",
    ]

    kubectl.patch(
        "secret",
        "s",
        ns,
        {"metadata": {"$setElementOrder/finalizers": ["example.com/b", "example.com/c"]}},
    )
    secret = kubectl.get("secret", "s", ns)
    assert secret["metadata"]["finalizers"] == ["example.com/b", "example.com/c"]
    assert secret["data"] == {"a": "YQ==", "b": "Yg=="}


def test_patch_owner_references_by_uid(kubectl: Kubectl, ns: str, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    refs = []
    for name in ("owner-1", "owner-2"):
        owner = core.create_namespaced_config_map(ns, {"metadata": {"name": name}})
        refs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": owner.metadata.uid}
        )
    make_secret(api, ns, "owned", ownerReferences=refs)
    kubectl.patch(
        "secret",
        "owned",
        ns,
        {"metadata": {"ownerReferences": [{"uid": refs[1]["uid"], "blockOwnerDeletion": True}]}},
    )
    owners = kubectl.get("secret", "owned", ns)["metadata"]["ownerReferences"]
    assert owners == [refs[0], {**refs[1], "blockOwnerDeletion": True}]

    kubectl.patch(
        "secret",
        "owned",
        ns,
        {"metadata": {"ownerReferences": [{"$patch": "delete", "uid": refs[0]["uid"]}]}},
    )
    owners = kubectl.get("secret", "owned", ns)["metadata"]["ownerReferences"]
    assert owners == [{**refs[1], "blockOwnerDeletion": True}]


def test_patch_secret_and_configmap_maps(kubectl: Kubectl, ns: str, api: client.ApiClient) -> None:
    make_secret(api, ns, "data", labels={"app": "x", "tier": "db"})
    kubectl.patch(
        "secret",
        "data",
        ns,
        {"metadata": {"labels": {"tier": None, "team": "infra"}}, "data": {"a": None, "c": "Yw=="}},
    )
    secret = kubectl.get("secret", "data", ns)
    assert secret["data"] == {"b": "Yg==", "c": "Yw=="}
    assert secret["metadata"]["labels"] == {"app": "x", "team": "infra"}

    client.CoreV1Api(api).create_namespaced_config_map(
        ns, {"metadata": {"name": "cm", "finalizers": ["example.com/keep"]}, "data": {"x": "1"}}
    )
    kubectl.patch(
        "configmap",
        "cm",
        ns,
        {"metadata": {"finalizers": ["example.com/new"]}, "data": {"y": "2"}},
    )
    config = kubectl.get("configmap", "cm", ns)
    assert config["data"] == {"x": "1", "y": "2"}
    assert config["metadata"]["finalizers"] == ["example.com/new", "example.com/keep"]
    kubectl.patch("configmap", "cm", ns, {"data": {"$patch": "replace", "z": "3"}})
    assert kubectl.get("configmap", "cm", ns)["data"] == {"z": "3"}


def test_patch_namespace_finalizers(kubectl: Kubectl, api: client.ApiClient) -> None:
    name = f"sp-ns-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(
        {"metadata": {"name": name, "finalizers": ["example.com/a"], "labels": {"x": "1"}}}
    )
    try:
        kubectl.patch(
            "namespace",
            name,
            None,
            {"metadata": {"finalizers": ["example.com/b"], "labels": {"y": "2"}}},
        )
        meta = kubectl.get("namespace", name)["metadata"]
        assert meta["finalizers"] == ["example.com/b", "example.com/a"]
        assert meta["labels"]["x"] == "1" and meta["labels"]["y"] == "2"
        kubectl.patch(
            "namespace",
            name,
            None,
            {"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/b"]}},
        )
        assert kubectl.get("namespace", name)["metadata"]["finalizers"] == ["example.com/a"]
    finally:
        core.patch_namespace(name, {"metadata": {"finalizers": None}})
        core.delete_namespace(name)


SECRET = """
apiVersion: v1
kind: Secret
metadata:
  name: applied
  finalizers: {finalizers}
data:
  user: YWRtaW4=
"""


def test_apply_keeps_finalizers_it_does_not_own(
    kubectl: Kubectl, ns: str, api: client.ApiClient
) -> None:
    """`kubectl apply` diffs against its last-applied annotation: it removes what it had
    applied (`$deleteFromPrimitiveList`), orders what it applies (`$setElementOrder`) and
    leaves the finalizers another client added."""

    def apply(finalizers: list[str]) -> str:
        manifest = SECRET.format(finalizers=json.dumps(finalizers))
        return kubectl.run("apply", "-n", ns, "-f", "-", stdin=manifest)

    assert "secret/applied created" in apply(["example.com/a", "example.com/b"])
    client.CoreV1Api(api).patch_namespaced_secret(
        "applied", ns, {"metadata": {"finalizers": ["example.com/controller"]}}
    )
    live = kubectl.get("secret", "applied", ns)["metadata"]["finalizers"]
    assert live == ["example.com/controller", "example.com/a", "example.com/b"]

    assert "secret/applied configured" in apply(["example.com/a"])
    live = kubectl.get("secret", "applied", ns)["metadata"]["finalizers"]
    assert live == ["example.com/controller", "example.com/a"]
    # The same manifest again: kubectl still sends `$setElementOrder` (the live list differs
    # from the manifest's), which leaves the list as it is.
    apply(["example.com/a"])
    live = kubectl.get("secret", "applied", ns)["metadata"]["finalizers"]
    assert live == ["example.com/controller", "example.com/a"]

    assert "secret/applied configured" in apply(["example.com/a", "example.com/d"])
    secret = kubectl.get("secret", "applied", ns)
    assert secret["metadata"]["finalizers"] == [
        "example.com/controller",
        "example.com/a",
        "example.com/d",
    ]
    assert secret["data"] == {"user": "YWRtaW4="}
