"""HostClaims on `metal3 lab`, as a tenant uses them: 12 lab hosts of the 3 profiles registered
by their owner in one namespace with a HostDeployPolicy, `metal3 standalone --lab DIR` as a
process with the direct provisioner, and 10 claims with different selectors in a tenant's
namespace.

Each claim binds a host its selector matches (the test says which hosts each may get, from the
labels it gave them), which is provisioned with the claim's image and user data: the lab's
disk holds the image's bytes and its config drive the claim's user data (read with `sfdisk`,
`blkid`, `bsdtar`). A claim nothing matches waits (Associated False, NoBareMetalHost) until
its host is added; changing a claim's image re-provisions its host; deleting a claim
deprovisions its host (disk wiped) and frees it.
"""

from __future__ import annotations

import base64
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from claims.claimkit import condition_is, eventually, get_or_none, make_namespace
from metal3.kube.client import KubeClient
from metal3.kube.resources import (
    BAREMETALHOSTS,
    HOSTCLAIMS,
    HOSTDEPLOYPOLICIES,
    SECRETS,
)
from provisioner.harness import Image, make_qcow2, read_at, sh
from provisioner.labkit import (
    GPT_HEAD,
    LabRun,
    StandaloneProcess,
    lab_up,
    read_config_drive,
)

pytestmark = pytest.mark.anyio

INFRA = "lab-infra"
TENANT = "lab-tenant"
PROFILE = "lab.metal3.io/profile"
RACK = "example.com/rack"
GPU = "example.com/gpu"
SLOW = 1500.0  # seconds: 11 hosts registering, inspecting, provisioning on a loaded machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


def host_labels(lab: LabRun) -> dict[str, dict[str, str]]:
    """Extra labels per host: index 0-1 of each profile in rack r1, 2-3 in r2, except the last
    storage host (rack r3: only the waiting claim wants it); the second medium host has a GPU."""
    by_profile: dict[str, list[str]] = {}
    for name, documents in sorted(lab.manifests().items()):
        host = next(d for d in documents if d["kind"] == "BareMetalHost")
        by_profile.setdefault(host["metadata"]["labels"][PROFILE], []).append(name)
    assert sorted(len(v) for v in by_profile.values()) == [4, 4, 4], by_profile
    labels: dict[str, dict[str, str]] = {}
    for profile, names in by_profile.items():
        for index, name in enumerate(names):
            labels[name] = {PROFILE: profile, RACK: "r1" if index < 2 else "r2"}
    labels[by_profile["storage"][3]][RACK] = "r3"
    labels[by_profile["medium"][1]][GPU] = "yes"
    return labels


# name -> (selector, which image); each may only get hosts whose labels match (checked below).
CLAIMS: dict[str, tuple[dict[str, Any], str]] = {
    "small-r1-a": ({"matchLabels": {PROFILE: "small", RACK: "r1"}}, "a"),
    "small-r1-b": ({"matchLabels": {PROFILE: "small", RACK: "r1"}}, "b"),
    "small-not-r1": (
        {"matchLabels": {PROFILE: "small"}, "matchExpressions": [expr(RACK, "NotIn", "r1")]},
        "a",
    ),
    "medium-r2-a": (
        {"matchExpressions": [expr(PROFILE, "In", "medium"), expr(RACK, "In", "r2")]},
        "b",
    ),
    "medium-r2-b": (
        {"matchExpressions": [expr(PROFILE, "in", "medium"), expr(RACK, "=", "r2")]},
        "a",
    ),
    "medium-r1-no-gpu": (
        {
            "matchLabels": {PROFILE: "medium", RACK: "r1"},
            "matchExpressions": [expr(GPU, "DoesNotExist")],
        },
        "b",
    ),
    "gpu": ({"matchExpressions": [expr(GPU, "Exists")]}, "a"),
    "storage-r1-a": ({"matchLabels": {PROFILE: "storage", RACK: "r1"}}, "b"),
    "storage-r1-b": (
        {"matchLabels": {PROFILE: "storage"}, "matchExpressions": [expr(RACK, "In", "r1")]},
        "a",
    ),
    "storage-r2": ({"matchLabels": {PROFILE: "storage", RACK: "r2"}}, "b"),
}
WAITING = ("storage-r3", ({"matchLabels": {RACK: "r3"}}, "a"))


def satisfies(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """The test's own reading of the selectors above (only the operators they use)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e["values"]
        ok = {
            "In": labels.get(key) in values,
            "in": labels.get(key) in values,
            "=": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def user_data(claim: str) -> bytes:
    return f"#cloud-config\nwrite_files: [{{path: /etc/claim, content: {claim}}}]\n".encode()


def image_spec(lab: LabRun, image: Image) -> dict[str, Any]:
    return {
        "url": lab.image_url(image.name),
        "checksum": image.sha256,
        "checksumType": "sha256",
        "format": "qcow2",
    }


async def claim_of(client: KubeClient, name: str) -> Any:
    return await get_or_none(client, HOSTCLAIMS, TENANT, name)


def provisioned(claim: dict[str, Any] | None) -> bool:
    status = (claim or {}).get("status") or {}
    return (
        condition_is(claim, "Associated", "True", "BareMetalHostAssociated")
        and condition_is(claim, "Synchronized", "True", "ConfigurationSynced")
        and status.get("provisioningState") == "provisioned"
        and status.get("poweredOn") is True
    )


async def create_claim(
    client: KubeClient, lab: LabRun, name: str, selector: dict[str, Any], image: Image
) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-user-data", "namespace": TENANT},
        "data": {"userData": base64.b64encode(user_data(name)).decode()},
    }
    await client.create(SECRETS, secret)
    await client.create(
        HOSTCLAIMS,
        {
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "HostClaim",
            "metadata": {"name": name, "namespace": TENANT},
            "spec": {
                "poweredOn": True,
                "hostSelector": selector,
                "image": image_spec(lab, image),
                "userData": {"name": f"{name}-user-data"},
            },
        },
    )


async def check_disk(lab: LabRun, host: str, image: Image, claim: str, scratch: Path) -> str:
    """The host booted its disk with the image's bytes and the claim's user data on the
    config drive; the disk's path."""
    with anyio.fail_after(120):
        while lab.state(host).get("booted") != "os":
            await anyio.sleep(0.5)
    found = lab.os_boot(host)
    assert found is not None and found["booted"] is True, found
    disk = Path(found["disk"])
    reference = image.reference.read_bytes()
    region = await anyio.to_thread.run_sync(read_at, disk, 0, len(reference))
    assert region[GPT_HEAD:] == reference[GPT_HEAD:], f"{host}: not {image.name} on {disk}"
    drive = await anyio.to_thread.run_sync(read_config_drive, disk, scratch)
    assert drive.label == "config-2", drive
    assert drive.user_data == user_data(claim), (host, drive.user_data)
    return str(disk)


async def test_claims_on_the_lab(tmp_path: Path) -> None:
    started = time.monotonic()
    images = {
        "a": await anyio.to_thread.run_sync(
            lambda: make_qcow2(tmp_path, "os-a", size_mib=48, random_mib=8)
        ),
        "b": await anyio.to_thread.run_sync(
            lambda: make_qcow2(tmp_path, "os-b", size_mib=48, random_mib=8)
        ),
    }
    lab_args = ("--hosts", "12", "--power-delay", "0", "--namespace", INFRA)
    with lab_up(tmp_path / "lab", *lab_args) as lab:
        for image in images.values():
            shutil.copy(image.path, lab.images / image.name)
        standalone = StandaloneProcess(
            tmp_path / "standalone", lab.dir, free_port(), "--agent-timeout", "600"
        )
        await anyio.to_thread.run_sync(standalone.start)
        try:
            async with await KubeClient.connect(str(standalone.kubeconfig)) as client:
                await _run(client, lab, images, tmp_path)
        finally:
            await anyio.to_thread.run_sync(standalone.stop)
        logs = standalone.logs()
        assert "Traceback" not in logs, logs[-5000:]
    print(f"\nclaims on the lab: {time.monotonic() - started:.0f} s")


async def _run(client: KubeClient, lab: LabRun, images: dict[str, Image], scratch: Path) -> None:
    labels = host_labels(lab)
    late = next(name for name, extra in labels.items() if extra[RACK] == "r3")
    await make_namespace(client, INFRA)
    await make_namespace(client, TENANT)
    await client.create(
        HOSTDEPLOYPOLICIES,
        {
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "HostDeployPolicy",
            "metadata": {"name": "tenants", "namespace": INFRA},
            "spec": {"hostClaimNamespaces": {"names": [TENANT]}},
        },
    )
    manifests = lab.manifests()

    async def register(name: str) -> None:
        for document in manifests[name]:
            if document["kind"] == "Namespace":
                continue
            if document["kind"] == "BareMetalHost":
                document["metadata"]["labels"] = labels[name]
            await client.create(
                SECRETS if document["kind"] == "Secret" else BAREMETALHOSTS, document
            )

    for name in sorted(manifests):
        if name != late:
            await register(name)

    # The claims go in at once, while the hosts are still registering and inspecting.
    for name, (selector, image) in CLAIMS.items():
        await create_claim(client, lab, name, selector, images[image])
    waiting_name, (waiting_selector, waiting_image) = WAITING
    await create_claim(client, lab, waiting_name, waiting_selector, images[waiting_image])

    claims: dict[str, dict[str, Any]] = {}
    for name in CLAIMS:
        claims[name] = await eventually(
            lambda n=name: claim_of(client, n), provisioned,
            timeout=SLOW, what=f"claim {name} provisioned", interval=1.0,
        )  # fmt: skip
    bound = {name: c["status"]["bareMetalHost"]["name"] for name, c in claims.items()}
    assert len(set(bound.values())) == len(CLAIMS), bound
    for name, host in bound.items():
        assert satisfies(CLAIMS[name][0], labels[host]), (name, host, labels[host])
        obj = await client.get(BAREMETALHOSTS, INFRA, host)
        assert obj["spec"]["consumerRef"]["name"] == name
        assert obj["spec"]["image"]["url"] == lab.image_url(images[CLAIMS[name][1]].name)
        assert claims[name]["status"]["hardwareData"] == {"namespace": INFRA, "name": host}
    disks = {}
    for name, host in bound.items():
        disks[name] = await check_disk(lab, host, images[CLAIMS[name][1]], name, scratch)

    # Nothing matches the waiting claim until its host is added.
    waiting = await claim_of(client, waiting_name)
    assert condition_is(waiting, "Associated", "False", "NoBareMetalHost"), waiting
    assert "bareMetalHost" not in waiting["status"]
    await register(late)
    waiting = await eventually(
        lambda: claim_of(client, waiting_name), provisioned,
        timeout=SLOW, what="the waiting claim provisioned", interval=1.0,
    )  # fmt: skip
    assert waiting["status"]["bareMetalHost"]["name"] == late
    await check_disk(lab, late, images[waiting_image], waiting_name, scratch)

    # A new image re-provisions the claim's host with it.
    changed = "small-r1-a"
    claim = await claim_of(client, changed)
    claim["spec"]["image"] = image_spec(lab, images["b"])
    await client.replace(HOSTCLAIMS, claim)
    host = bound[changed]

    async def on_disk_b() -> bool:
        obj = await client.get(BAREMETALHOSTS, INFRA, host)
        done = (obj["status"]["provisioning"].get("image") or {}).get("url")
        return bool(
            obj["status"]["provisioning"]["state"] == "provisioned"
            and done == lab.image_url(images["b"].name)
        )

    await eventually(on_disk_b, bool, timeout=SLOW, what="re-provisioning", interval=1.0)
    await check_disk(lab, host, images["b"], changed, scratch)

    # Deleting a claim deprovisions (cleans) its host and frees it.
    gone = "storage-r2"
    await client.delete(HOSTCLAIMS, TENANT, gone)
    await eventually(
        lambda: claim_of(client, gone), lambda c: c is None,
        timeout=SLOW, what="the deleted claim to go", interval=1.0,
    )  # fmt: skip
    freed = await client.get(BAREMETALHOSTS, INFRA, bound[gone])
    assert "consumerRef" not in freed["spec"] and "image" not in freed["spec"]
    assert freed["status"]["provisioning"]["state"] == "available"
    assert freed["spec"]["online"] is False
    wiped = await anyio.to_thread.run_sync(
        lambda: sh("wipefs", "--no-act", "--noheadings", disks[gone]).stdout.decode()
    )
    assert wiped.strip() == "", wiped
    secrets, _ = await client.list(SECRETS, INFRA)
    named = "hostclaim.metal3.io/name"
    assert not [s for s in secrets if (s["metadata"].get("annotations") or {}).get(named) == gone]
