"""Metal3Machine (infrastructure.cluster.x-k8s.io/v1beta1): the CRD against CAPM3's API, the
controller against the embedded API server with the operator in this process.

The operator tests run the **fixture provisioner** (simulated hardware, named so: the
Metal3Machine face of the claim engine is under test, not the hardware) on a real `metal3
apiserver`: without Cluster API (no Machine CRD: the owner reference to a Machine is ignored),
with a minimal Cluster API Machine CRD of our own (`crds/machine.yaml`: waiting for bootstrap
data, providerID and addresses on the Machine, deletion through the Machine's garbage
collection), no host matching, and a host that gives up provisioning (failureReason). Then
the Cluster API flow on `metal3 lab` (root): the direct provisioner, and the config drive read
from the lab host's disk.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from api.test_crd import agree
from apiserver.apiserver_kit import ServerProcess, current_kubectl
from baremetalhost.kit import FAST, IMAGE, Cluster, cluster, host, running_operator, state
from metal3.api.metal3machine import Metal3Machine
from metal3.claims.metal3machine import SpecError, addresses_of, selector_of
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, MACHINES, METAL3MACHINES, SECRETS
from metal3.provisioner.direct.settings import DirectSettings
from metal3.provisioner.fixture import FixtureWorld
from provisioner.harness import make_qcow2, sh
from provisioner.labkit import image_on_disk, lab_operator, lab_up, read_config_drive

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
MACHINE_CRD = Path(__file__).resolve().parent / "crds" / "machine.yaml"
M3M_CRD = REPO / "crds" / "infrastructure.cluster.x-k8s.io_metal3machines.yaml"
FINALIZER = "metal3machine.infrastructure.cluster.x-k8s.io"
BOOTSTRAP = b"#cloud-config\nruncmd: [kubeadm join]\n"


# --- the CRD and pure helpers ------------------------------------------------------------------


def test_crd_matches_the_type_and_capm3_names() -> None:
    crd = yaml.safe_load(M3M_CRD.read_text())
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    assert agree(Metal3Machine, schema, "") == []
    assert crd["metadata"]["name"] == "metal3machines.infrastructure.cluster.x-k8s.io"
    assert crd["spec"]["names"]["shortNames"] == [
        "m3m", "m3machine", "m3machines", "metal3m", "metal3machine",
    ]  # fmt: skip
    assert crd["spec"]["names"]["categories"] == ["cluster-api"]
    assert (version["name"], version["subresources"]) == ("v1beta1", {"status": {}})
    spec = schema["properties"]["spec"]["properties"]
    assert sorted(spec) == sorted([
        "providerID", "image", "customDeploy", "userData", "hostSelector", "dataTemplate",
        "metaData", "networkData", "automatedCleaningMode", "failureDomain",
    ])  # fmt: skip
    assert spec["image"]["required"] == ["url", "checksum"]
    assert spec["automatedCleaningMode"]["enum"] == ["metadata", "disabled"]
    requirement = spec["hostSelector"]["properties"]["matchExpressions"]["items"]
    assert requirement["required"] == ["key", "operator", "values"]
    status = schema["properties"]["status"]["properties"]
    assert sorted(status) == sorted([
        "lastUpdated", "failureReason", "failureMessage", "addresses", "phase", "ready",
        "userData", "renderedData", "metaData", "networkData", "conditions",
    ])  # fmt: skip
    assert status["addresses"]["items"]["properties"]["type"]["enum"] == [
        "Hostname", "ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS",
    ]  # fmt: skip
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("Age", ".metadata.creationTimestamp"),
        ("ProviderID", ".spec.providerID"),
        ("Ready", ".status.ready"),
        ("Cluster", ".metadata.labels.cluster\\.x-k8s\\.io/cluster-name"),
        ("Phase", ".status.phase"),
    ]


def test_capm3_selector_operators_become_label_selector_ones() -> None:
    spec = {
        "hostSelector": {
            "matchLabels": {"rack": "a"},
            "matchExpressions": [
                {"key": "size", "operator": "in", "values": ["m", "l"]},
                {"key": "gpu", "operator": "exists", "values": []},
                {"key": "broken", "operator": "!", "values": []},
                {"key": "zone", "operator": "!=", "values": ["z9"]},
                {"key": "arch", "operator": "In", "values": ["x86_64"]},
            ],
        }
    }
    assert selector_of(spec) == {
        "matchLabels": {"rack": "a"},
        "matchExpressions": [
            {"key": "size", "operator": "In", "values": ["m", "l"]},
            {"key": "gpu", "operator": "Exists", "values": []},
            {"key": "broken", "operator": "DoesNotExist", "values": []},
            {"key": "zone", "operator": "NotIn", "values": ["z9"]},
            {"key": "arch", "operator": "In", "values": ["x86_64"]},
        ],
    }
    assert selector_of({}) == {"matchLabels": {}}
    with pytest.raises(SpecError, match="'gt' is not supported"):
        selector_of({"hostSelector": {"matchExpressions": [{"key": "cpus", "operator": "gt",
                                                             "values": ["4"]}]}})  # fmt: skip
    with pytest.raises(SpecError, match="needs one value"):
        selector_of({"hostSelector": {"matchExpressions": [{"key": "a", "operator": "=",
                                                             "values": ["1", "2"]}]}})  # fmt: skip


def test_addresses_are_the_nics_ips_and_the_host_name() -> None:
    nics = [
        {"name": "eth0", "ip": "192.0.2.5"},
        {"name": "eth1"},
        {"name": "e2", "ip": "2001:db8::5"},
    ]
    bmh = {"status": {"hardware": {"hostname": "node-1", "nics": nics}}}
    assert addresses_of(bmh) == [
        {"type": "InternalIP", "address": "192.0.2.5"},
        {"type": "InternalIP", "address": "2001:db8::5"},
        {"type": "Hostname", "address": "node-1"},
        {"type": "InternalDNS", "address": "node-1"},
    ]
    assert addresses_of({"status": {}}) == []


# --- helpers for the operator tests -----------------------------------------------------------


@pytest.fixture(scope="module")
def capi_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An API server with the project's CRDs and our minimal Cluster API Machine CRD."""
    crds = tmp_path_factory.mktemp("capi-crds")
    for path in (REPO / "crds").glob("*.yaml"):
        shutil.copy(path, crds / path.name)
    shutil.copy(MACHINE_CRD, crds / "cluster.x-k8s.io_machines.yaml")
    server = ServerProcess(tmp_path_factory.mktemp("capi-apiserver") / "data", crds, [])
    server.start()
    yield server
    server.stop()


@asynccontextmanager
async def operator_on(kubeconfig: Path, namespace: str) -> AsyncIterator[Cluster]:
    """A client in a fresh namespace and the operator (fixture provisioner) watching it."""
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, FixtureWorld(), namespace=namespace),
    ):
        yield c


def metal3machine(
    name: str, namespace: str, spec: dict[str, Any], owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
        "kind": "Metal3Machine",
        "metadata": metadata,
        "spec": spec,
    }


def machine_owner(machine: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cluster.x-k8s.io/v1beta1",
        "kind": "Machine",
        "name": machine["metadata"]["name"],
        "uid": machine["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def data_secret(name: str, namespace: str, key: str, value: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {key: base64.b64encode(value).decode()},
    }


async def get_or_none(client: KubeClient, resource: Any, ns: str, name: str) -> Any:
    try:
        return await client.get(resource, ns, name)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise


async def wait_m3m(
    c: Cluster,
    name: str,
    check: Callable[[dict[str, Any] | None], bool],
    what: str,
    timeout: float = 60.0,
) -> dict[str, Any] | None:
    last: dict[str, Any] | None = None
    with anyio.move_on_after(timeout):
        while True:
            last = await get_or_none(c.client, METAL3MACHINES, c.namespace, name)
            if check(last):
                return last
            await anyio.sleep(0.1)
    hosts, _ = await c.client.list(BAREMETALHOSTS, c.namespace)
    raise AssertionError(f"Metal3Machine {name}: timed out waiting for {what}: {last}; {hosts}")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return {}


def ready(obj: dict[str, Any] | None) -> bool:
    return bool(((obj or {}).get("status") or {}).get("ready"))


async def available_host(c: Cluster, name: str, labels: dict[str, str]) -> dict[str, Any]:
    manifest = host(name, c.namespace, online=False)
    manifest["metadata"]["labels"] = labels
    await c.apply_host(manifest)
    return await c.wait_state(name, "available", timeout=60)


def consumer_name(obj: dict[str, Any] | None) -> str | None:
    ref = ((obj or {}).get("spec") or {}).get("consumerRef") or {}
    name = ref.get("name")
    return str(name) if name else None


async def wait_released(c: Cluster, name: str) -> dict[str, Any]:
    obj = await c.wait_for(
        name,
        lambda o: o is not None and consumer_name(o) is None and state(o) == "available",
        timeout=60,
        what="released: available, no consumerRef",
    )
    assert obj is not None
    return obj


# --- the operator tests -----------------------------------------------------------------------


async def test_without_cluster_api_the_metal3machine_stands_alone(
    kubeconfig: Path, namespace: str
) -> None:
    """No Machine CRD on this server: the owner reference to a Machine is ignored (404 on the
    resource), spec.userData is the user data, and the whole lifecycle works."""
    async with operator_on(kubeconfig, namespace) as c:
        await available_host(c, "host-a", {"role": "storage"})
        free = await available_host(c, "host-b", {"role": "worker"})
        await c.client.create(SECRETS, data_secret("ud", namespace, "userData", b"#!/bin/sh\n"))
        dangling = {
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine", "name": "m0",
            "uid": str(uuid.uuid4()),
        }  # fmt: skip
        spec = {
            "image": {"url": IMAGE["url"], "checksum": IMAGE["checksum"], "checksumType": "sha256"},
            "userData": {"name": "ud"},
            "metaData": {"name": "md"},
            "automatedCleaningMode": "disabled",
            "hostSelector": {"matchLabels": {"role": "worker"}},
        }
        await c.client.create(SECRETS, data_secret("md", namespace, "metaData", b"{}"))
        created = metal3machine("m3m-0", namespace, spec, dangling)
        created["metadata"]["labels"] = {"cluster.x-k8s.io/cluster-name": "c1"}
        await c.client.create(METAL3MACHINES, created)

        m3m = await wait_m3m(c, "m3m-0", ready, "ready")
        assert m3m is not None
        assert FINALIZER in m3m["metadata"]["finalizers"]
        assert m3m["spec"]["providerID"] == f"metal3://{namespace}/host-b/m3m-0"
        bmh = await c.get("host-b")
        assert bmh is not None
        assert state(bmh) == "provisioned"
        assert bmh["spec"]["consumerRef"]["kind"] == "Metal3Machine"
        assert bmh["spec"]["consumerRef"]["name"] == "m3m-0"
        assert bmh["spec"]["consumerRef"]["uid"] == m3m["metadata"]["uid"]
        assert bmh["spec"]["image"]["url"] == IMAGE["url"]
        assert bmh["spec"]["userData"] == {"name": "ud", "namespace": namespace}
        assert bmh["spec"]["metaData"] == {"name": "md", "namespace": namespace}
        assert bmh["spec"]["automatedCleaningMode"] == "disabled"
        assert bmh["spec"]["online"] is True
        nic_ip = free["status"]["hardware"]["nics"][0]["ip"]
        status = m3m["status"]
        assert {"type": "InternalIP", "address": nic_ip} in status["addresses"]
        assert {"type": "Hostname", "address": "host-b"} in status["addresses"]
        assert status["userData"] == {"name": "ud", "namespace": namespace}
        assert condition(m3m, "AssociateBMH")["status"] == "True"
        assert condition(m3m, "Ready")["status"] == "True"
        assert "failureReason" not in status
        assert consumer_name(await c.get("host-a")) is None
        table = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [current_kubectl(), "--kubeconfig", str(kubeconfig), "get", "m3m", "-n",
                 namespace], capture_output=True, text=True, timeout=60,
            )
        )  # fmt: skip
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()
        assert header.split() == ["NAME", "AGE", "PROVIDERID", "READY", "CLUSTER", "PHASE"]
        assert row.split()[2:5] == [f"metal3://{namespace}/host-b/m3m-0", "true", "c1"]

        await c.client.delete(METAL3MACHINES, namespace, "m3m-0")
        await wait_m3m(c, "m3m-0", lambda o: o is None, "deletion")
        freed = await wait_released(c, "host-b")
        for field in ("image", "userData", "metaData", "customDeploy"):
            assert field not in freed["spec"], field
        assert freed["spec"]["online"] is False
        assert "image" not in (freed["status"]["provisioning"] or {})


async def test_no_matching_host_then_one_is_added(kubeconfig: Path, namespace: str) -> None:
    async with operator_on(kubeconfig, namespace) as c:
        await available_host(c, "host-a", {"role": "storage"})
        spec = {"image": {"url": IMAGE["url"], "checksum": IMAGE["checksum"]},
                "hostSelector": {"matchExpressions": [
                    {"key": "role", "operator": "in", "values": ["gpu"]}]}}  # fmt: skip
        await c.client.create(METAL3MACHINES, metal3machine("m3m-1", namespace, spec))
        m3m = await wait_m3m(
            c, "m3m-1", lambda o: condition(o, "AssociateBMH").get("status") == "False",
            "AssociateBMH False",
        )  # fmt: skip
        associate = condition(m3m, "AssociateBMH")
        assert associate["reason"] == "AssociateBMHFailed"
        assert associate["severity"] == "Error"  # as CAPM3 sets it
        assert associate["message"].startswith("NoBareMetalHost: no available BareMetalHost")
        assert condition(m3m, "Ready")["status"] == "False"
        assert m3m is not None and m3m["status"]["ready"] is False
        assert consumer_name(await c.get("host-a")) is None

        # Specs this controller refuses: said in the condition, nothing bound.
        refused = {
            "m3m-noimage": ({"hostSelector": {}}, "spec.image or spec.customDeploy is required"),
            "m3m-gt": ({"image": spec["image"], "hostSelector": {"matchExpressions": [
                {"key": "cpus", "operator": "gt", "values": ["4"]}]}},
                "hostSelector operator 'gt' is not supported"),
            "m3m-elsewhere": ({"image": spec["image"], "hostSelector": {"namespace": "other"}},
                              "hostSelector.namespace 'other': only hosts in the"),
        }  # fmt: skip
        for name, (bad, _) in refused.items():
            await c.client.create(METAL3MACHINES, metal3machine(name, namespace, bad))
        for name, (_, message) in refused.items():
            bad_m3m = await wait_m3m(
                c, name, lambda o: condition(o, "AssociateBMH").get("status") == "False",
                "AssociateBMH False",
            )  # fmt: skip
            associate = condition(bad_m3m, "AssociateBMH")
            assert associate["reason"] == "AssociateBMHFailed"
            assert associate["message"].startswith(message), associate

        gpu = host("host-gpu", namespace, online=False)  # bound as soon as it is available
        gpu["metadata"]["labels"] = {"role": "gpu"}
        await c.apply_host(gpu)
        m3m = await wait_m3m(c, "m3m-1", ready, "ready")
        assert m3m is not None
        assert m3m["spec"]["providerID"] == f"metal3://{namespace}/host-gpu/m3m-1"
        assert consumer_name(await c.get("host-a")) is None
        for name in refused:
            assert not ready(await c.client.get(METAL3MACHINES, namespace, name))


async def test_a_host_that_gives_up_provisioning_sets_failure_reason(
    kubeconfig: Path, namespace: str
) -> None:
    """The fixture host fails every provisioning attempt; after the operator's
    max_provisioning_retries (3 in FAST) it stops retrying, and only then is the failure
    terminal for Cluster API."""
    async with operator_on(kubeconfig, namespace) as c:
        manifest = host("host-f", namespace, online=False,
                        annotations={"fixture.metal3.io/provision": "fail"})  # fmt: skip
        await c.apply_host(manifest)
        await c.wait_state("host-f", "available", timeout=60)
        spec = {"image": {"url": IMAGE["url"], "checksum": IMAGE["checksum"]}}
        await c.client.create(METAL3MACHINES, metal3machine("m3m-f", namespace, spec))
        m3m = await wait_m3m(
            c, "m3m-f", lambda o: bool(((o or {}).get("status") or {}).get("failureReason")),
            "failureReason",
        )  # fmt: skip
        assert m3m is not None
        bmh = await c.get("host-f")
        assert bmh is not None
        assert bmh["status"]["provisioningFailCount"] >= FAST.max_provisioning_retries
        status = m3m["status"]
        assert status["failureReason"] == "CreateError"
        assert status["failureMessage"].startswith(
            f"host {namespace}/host-f failed provisioning {FAST.max_provisioning_retries} times"
        )
        assert status["ready"] is False
        assert "providerID" not in m3m["spec"]
        assert condition(m3m, "Ready")["reason"] == "HostProvisioningFailed"

        await c.client.delete(METAL3MACHINES, namespace, "m3m-f")
        await wait_m3m(c, "m3m-f", lambda o: o is None, "deletion")
        await wait_released(c, "host-f")


async def test_a_machine_without_bootstrap_data_is_waited_for(
    capi_apiserver: ServerProcess, namespace: str
) -> None:
    """Owned by a Machine whose bootstrap data is not there yet: no host is bound (condition
    WaitingForBootstrapReady); once the Machine names its bootstrap Secret, that Secret is
    the host's user data, and the Machine gets the providerID and addresses. Deleting the
    Machine (garbage collection of the Metal3Machine) releases the host."""
    kubeconfig = capi_apiserver.kubeconfig
    async with operator_on(kubeconfig, namespace) as c:
        await available_host(c, "host-0", {})
        machine = await c.client.create(MACHINES, {
            "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine",
            "metadata": {"name": "machine-0", "namespace": namespace},
            "spec": {"bootstrap": {}},
        })  # fmt: skip
        spec = {"image": {"url": IMAGE["url"], "checksum": IMAGE["checksum"]},
                "userData": {"name": "ignored-when-a-machine-gives-bootstrap-data"}}  # fmt: skip
        await c.client.create(
            METAL3MACHINES, metal3machine("m3m-0", namespace, spec, machine_owner(machine))
        )
        m3m = await wait_m3m(
            c, "m3m-0",
            lambda o: condition(o, "AssociateBMH").get("reason") == "WaitingForBootstrapReady",
            "WaitingForBootstrapReady",
        )  # fmt: skip
        assert "dataSecretName is not set yet" in condition(m3m, "AssociateBMH")["message"]
        await anyio.sleep(3)  # more than one poll of the Machine: still nothing bound
        assert consumer_name(await c.get("host-0")) is None
        m3m = await c.client.get(METAL3MACHINES, namespace, "m3m-0")
        assert condition(m3m, "AssociateBMH")["reason"] == "WaitingForBootstrapReady"

        await c.client.create(SECRETS, data_secret("machine-0-bootstrap", namespace, "value",
                                                   BOOTSTRAP))  # fmt: skip
        await c.client.patch(
            MACHINES,
            namespace,
            "machine-0",
            {"spec": {"bootstrap": {"dataSecretName": "machine-0-bootstrap"}}},
        )
        m3m = await wait_m3m(c, "m3m-0", ready, "ready")
        assert m3m is not None
        wanted = f"metal3://{namespace}/host-0/m3m-0"
        assert m3m["spec"]["providerID"] == wanted
        bmh = await c.get("host-0")
        assert bmh is not None
        assert bmh["spec"]["userData"] == {"name": "machine-0-bootstrap", "namespace": namespace}
        assert m3m["status"]["userData"] == bmh["spec"]["userData"]
        with anyio.fail_after(60):
            while True:
                machine = await c.client.get(MACHINES, namespace, "machine-0")
                if machine.get("status", {}).get("addresses"):
                    break
                await anyio.sleep(0.1)
        assert machine["spec"]["providerID"] == wanted
        assert machine["status"]["addresses"] == m3m["status"]["addresses"]
        assert {"type": "Hostname", "address": "host-0"} in machine["status"]["addresses"]

        await c.client.delete(MACHINES, namespace, "machine-0")
        await wait_m3m(c, "m3m-0", lambda o: o is None, "deletion with its Machine")
        await wait_released(c, "host-0")


async def test_the_controller_is_skipped_without_its_crd(tmp_path: Path, namespace: str) -> None:
    """An API server without the Metal3Machine CRD (no Cluster API provider installed): the
    operator runs its other controllers and no Metal3Machine one."""
    crds = tmp_path / "crds"
    crds.mkdir()
    for path in (REPO / "crds").glob("metal3.io_*.yaml"):
        shutil.copy(path, crds / path.name)
    server = ServerProcess(tmp_path / "data", crds, [])
    server.start()
    try:
        async with (
            cluster(server.kubeconfig, namespace) as c,
            running_operator(server.kubeconfig, FixtureWorld(), namespace=namespace) as operator,
        ):
            await available_host(c, "host-0", {})
            assert operator.metal3machines is None
            assert operator.reconciler is not None
    finally:
        server.stop()


# --- on `metal3 lab`: the direct provisioner, a real disk and its config drive --------------

LAB_DIRECT = DirectSettings(
    agent_timeout=120.0,
    poll_interval=0.3,
    agent_poll_interval=2.0,
    bmc_call_timeout=10.0,
    bmc_wait=0.5,
    power_timeout=60.0,
)


async def test_a_cluster_api_machine_on_the_lab(
    capi_apiserver: ServerProcess, namespace: str, tmp_path: Path
) -> None:
    """A Machine owning a Metal3Machine, on a lab host (Redfish, network-booted agent): the
    bootstrap data Secret reaches the config drive on the host's disk, providerID and
    addresses are set on both, and deleting the Machine deprovisions (cleans) and frees the
    host before the Metal3Machine goes."""
    kubeconfig = capi_apiserver.kubeconfig
    image = await anyio.to_thread.run_sync(
        lambda: make_qcow2(tmp_path, "m3m", size_mib=64, random_mib=8)
    )
    with lab_up(tmp_path / "lab", "--hosts", "1", "--power-delay", "0") as lab:
        (lab.images / image.name).write_bytes(image.path.read_bytes())
        name = "host-0"
        lab_host = lab.hosts[name]
        async with (
            cluster(kubeconfig, namespace) as c,
            lab_operator(kubeconfig, namespace, lab, LAB_DIRECT, FAST),
        ):
            for document in lab.manifests(namespace)[name]:
                if document["kind"] == "BareMetalHost":
                    document["spec"]["online"] = False
                    document["metadata"]["labels"] = {"pool": "lab"}
                await c.client.create(
                    BAREMETALHOSTS if document["kind"] == "BareMetalHost" else SECRETS, document
                )
            await c.wait_state(name, "available", timeout=240)

            await c.client.create(
                SECRETS, data_secret("machine-0-bootstrap", namespace, "value", BOOTSTRAP)
            )
            machine = await c.client.create(MACHINES, {
                "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Machine",
                "metadata": {"name": "machine-0", "namespace": namespace},
                "spec": {"bootstrap": {"dataSecretName": "machine-0-bootstrap"}},
            })  # fmt: skip
            spec = {
                "image": {"url": lab.image_url(image.name), "checksum": image.sha256,
                          "checksumType": "sha256", "format": "qcow2"},
                "hostSelector": {"matchLabels": {"pool": "lab"}},
            }  # fmt: skip
            await c.client.create(
                METAL3MACHINES, metal3machine("m3m-0", namespace, spec, machine_owner(machine))
            )
            m3m = await wait_m3m(c, "m3m-0", ready, "ready", timeout=300)
            assert m3m is not None
            bmh = await c.get(name)
            assert bmh is not None
            wanted = f"metal3://{namespace}/{name}/m3m-0"
            assert m3m["spec"]["providerID"] == wanted
            assert {"type": "InternalIP", "address": lab_host["ip"]} in m3m["status"]["addresses"]
            machine = await c.client.get(MACHINES, namespace, "machine-0")
            assert machine["spec"]["providerID"] == wanted
            assert machine["status"]["addresses"] == m3m["status"]["addresses"]

            with anyio.fail_after(60):  # the lab boots "the OS" from the disk
                while not (lab.os_boot(name) or {}).get("booted"):
                    await anyio.sleep(0.2)
            found = lab.os_boot(name)
            assert found is not None
            disk = Path(found["disk"])
            assert await anyio.to_thread.run_sync(image_on_disk, disk, image.reference)
            drive = await anyio.to_thread.run_sync(read_config_drive, disk, tmp_path)
            assert (drive.fs_type, drive.label) == ("iso9660", "config-2")
            assert drive.user_data == BOOTSTRAP
            assert drive.meta_data["uuid"] == bmh["metadata"]["uid"]
            assert drive.meta_data["name"] == name

            await c.client.delete(MACHINES, namespace, "machine-0")
            seen: list[str] = []
            with anyio.fail_after(300):
                while True:
                    current = await get_or_none(c.client, METAL3MACHINES, namespace, "m3m-0")
                    bmh = await c.get(name)
                    if current is not None and (not seen or seen[-1] != state(bmh)):
                        seen.append(state(bmh))
                    if current is None:
                        break
                    await anyio.sleep(0.2)
            assert "deprovisioning" in seen, seen  # the finalizer held the Metal3Machine
            freed = await wait_released(c, name)
            assert "image" not in freed["spec"] and "userData" not in freed["spec"]
        wiped = await anyio.to_thread.run_sync(
            lambda: sh("wipefs", "--no-act", "--noheadings", disk).stdout.decode()
        )
        assert wiped.strip() == "", wiped  # cleaned (automatedCleaningMode metadata)
        assert lab.state(name)["power"] == "off"
        print(f"\nhost states while the Metal3Machine was held by its finalizer: {seen}")
