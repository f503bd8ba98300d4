"""The HostClaim controller in the operator, on the embedded API server, with the fixture
provisioner (simulated hardware: these tests are about binding, policy and what is copied where;
provisioning real lab hosts is test_lab.py's).

Policy: a claim from a namespace the hosts' HostDeployPolicy does not allow never binds, one
from an allowed namespace does, and no claim can make the operator hand a tenant the hosts' BMC
credentials.
"""

from __future__ import annotations

import base64
import logging
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from apiserver.apiserver_kit import REPO, ServerProcess, current_kubectl
from baremetalhost.kit import FAST, Cluster, running_operator, secret
from claims.claimkit import (
    IMAGE,
    condition,
    condition_is,
    create_secret,
    eventually,
    get_or_none,
    hostclaim,
    make_namespace,
)
from metal3.claims.hostclaim import copy_name
from metal3.kube.client import KubeClient
from metal3.kube.resources import BAREMETALHOSTS, HOSTCLAIMS, HOSTDEPLOYPOLICIES, SECRETS
from metal3.provisioner.fixture import FixtureWorld

pytestmark = pytest.mark.anyio

BMC_PASSWORD = "bmc-s3cret-do-not-leak"
TIMEOUT = 60.0


def labelled_host(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "online": True,
            "bmc": {
                "address": f"redfish://10.0.0.1/redfish/v1/Systems/{name}",
                "credentialsName": f"{name}-bmc",
            },
        },
    }


async def add_host(client: KubeClient, namespace: str, name: str, labels: dict[str, str]) -> None:
    await client.create(SECRETS, secret(f"{name}-bmc", namespace, password=BMC_PASSWORD))
    await client.create(BAREMETALHOSTS, labelled_host(name, namespace, labels))


def policy(namespace: str, **constraints: Any) -> dict[str, Any]:
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "HostDeployPolicy",
        "metadata": {"name": "tenants", "namespace": namespace},
        "spec": {"hostClaimNamespaces": constraints},
    }


async def claim_of(client: KubeClient, namespace: str, name: str) -> Any:
    return await get_or_none(client, HOSTCLAIMS, namespace, name)


def bound_to(obj: dict[str, Any] | None) -> str | None:
    ref = ((obj or {}).get("status") or {}).get("bareMetalHost") or {}
    return ref.get("name")


async def wait_bound(client: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = await eventually(
        lambda: claim_of(client, namespace, name),
        lambda c: condition_is(c, "Associated", "True", "BareMetalHostAssociated"),
        timeout=TIMEOUT,
        what=f"HostClaim {namespace}/{name} to be associated",
    )
    return result


async def wait_available(client: KubeClient, namespace: str, names: list[str]) -> None:
    async def states() -> list[str]:
        items, _ = await client.list(BAREMETALHOSTS, namespace)
        return [
            ((h.get("status") or {}).get("provisioning") or {}).get("state", "")
            for h in items
            if h["metadata"]["name"] in names
        ]

    await eventually(
        states, lambda s: s == ["available"] * len(names), timeout=TIMEOUT, what="hosts available"
    )


def leaks(obj: Any) -> bool:
    """Whether an object holds the BMC password, in clear or base64."""
    text = repr(obj)
    return BMC_PASSWORD in text or base64.b64encode(BMC_PASSWORD.encode()).decode() in text


async def test_policy_decides_who_binds_and_bmc_credentials_never_reach_a_tenant(
    kubeconfig: Path, namespace: str
) -> None:
    infra, allowed, other = f"{namespace}-infra", f"{namespace}-ok", f"{namespace}-no"
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, infra)
        await make_namespace(client, allowed, {"tenant": "yes"})
        await make_namespace(client, other)
        for name in ("h1", "h2", "h3"):
            await add_host(client, infra, name, {"pool": "p"})
        await client.create(
            HOSTDEPLOYPOLICIES,
            policy(infra, names=[allowed], hasLabels=[{"name": "tenant", "value": "yes"}]),
        )
        await create_secret(client, "ud", allowed, userData="#cloud-config\nhostname: ok\n")
        await create_secret(client, "ud", other, userData="#cloud-config\n")
        selector = {"matchLabels": {"pool": "p"}}
        async with running_operator(kubeconfig, Cluster(client, infra).world, settings=FAST):
            await wait_available(client, infra, ["h1", "h2", "h3"])
            await client.create(
                HOSTCLAIMS, hostclaim("good", allowed, selector, image=IMAGE, user_data="ud")
            )
            # The allowed tenant tries to have the BMC Secret copied as its user data.
            evil = hostclaim("evil", allowed, selector, image=IMAGE)
            evil["spec"]["userData"] = {"name": "h2-bmc", "namespace": infra}
            await client.create(HOSTCLAIMS, evil)
            # A tenant the policy does not allow, naming the hosts' namespace outright.
            outsider = hostclaim("outsider", other, {**selector, "inNamespace": infra},
                                 image=IMAGE, user_data="ud")  # fmt: skip
            await client.create(HOSTCLAIMS, outsider)

            good = await wait_bound(client, allowed, "good")
            host_name = bound_to(good)
            assert host_name in ("h1", "h2", "h3")
            synced = await eventually(
                lambda: claim_of(client, allowed, "good"),
                lambda c: condition_is(c, "Synchronized", "True", "ConfigurationSynced"),
                timeout=TIMEOUT, what="good to be synchronized",
            )  # fmt: skip
            copy = copy_name(synced["metadata"]["uid"], "userdata")
            host = await client.get(BAREMETALHOSTS, infra, str(host_name))
            assert host["spec"]["consumerRef"]["name"] == "good"
            assert host["spec"]["image"] == IMAGE
            assert host["spec"]["userData"] == {"name": copy, "namespace": infra}
            copied = await client.get(SECRETS, infra, copy)
            tenant_secret = await client.get(SECRETS, allowed, "ud")
            assert copied["data"] == tenant_secret["data"]
            uid = synced["metadata"]["uid"]
            assert copied["metadata"]["labels"]["hostclaim.metal3.io/uid"] == uid

            evil_now = await eventually(
                lambda: claim_of(client, allowed, "evil"),
                lambda c: condition_is(c, "Synchronized", "False", "UserDataSecretSyncFailure"),
                timeout=TIMEOUT, what="evil to be refused its user data",
            )  # fmt: skip
            assert "must name a Secret in the claim's namespace" in str(
                condition(evil_now, "Synchronized")
            )
            evil_host = await client.get(BAREMETALHOSTS, infra, str(bound_to(evil_now)))
            assert "userData" not in evil_host["spec"]

            # The outsider stays unbound while a matching host sits available, however long.
            await anyio.sleep(3)
            out = await claim_of(client, other, "outsider")
            assert condition_is(out, "Associated", "False", "NoBareMetalHost"), out
            assert bound_to(out) is None
            free = await client.get(BAREMETALHOSTS, infra, "h1" if host_name != "h1" else "h2")
            hosts, _ = await client.list(BAREMETALHOSTS, infra)
            assert sum(1 for h in hosts if not h["spec"].get("consumerRef")) == 1, free

            # Nothing in a tenant namespace, secret or claim, ever holds the BMC password.
            for tenant in (allowed, other):
                secrets, _ = await client.list(SECRETS, tenant)
                claims, _ = await client.list(HOSTCLAIMS, tenant)
                assert not leaks(secrets) and not leaks(claims)

            # Opening the policy to the outsider's namespace binds it to the free host.
            current = await client.get(HOSTDEPLOYPOLICIES, infra, "tenants")
            current["spec"]["hostClaimNamespaces"] = {"names": [allowed, other]}
            await client.replace(HOSTDEPLOYPOLICIES, current)
            out = await wait_bound(client, other, "outsider")
            assert bound_to(out) not in (host_name, bound_to(evil_now))

            # The claim mirrors its host's progress; kubectl shows its host, state and age.
            await eventually(
                lambda: claim_of(client, allowed, "good"),
                lambda c: c["status"].get("provisioningState") == "provisioned"
                and c["status"].get("poweredOn") is True,
                timeout=TIMEOUT, what="good's host to be provisioned and on",
            )  # fmt: skip
            kubectl = [current_kubectl(), "--kubeconfig", str(kubeconfig)]
            done = await anyio.run_process([*kubectl, "get", "hostclaims", "-n", allowed])
            table = done.stdout.decode().splitlines()
            assert table[0].split() == ["NAME", "HOST", "STATE", "AGE"]
            rows = {line.split()[0]: line.split() for line in table[1:]}
            assert rows["good"][1] == host_name
            assert rows["good"][2] == "provisioned"

            # Deleting the claim deprovisions and frees its host, and drops the copy.
            await client.delete(HOSTCLAIMS, allowed, "good")
            await eventually(
                lambda: claim_of(client, allowed, "good"), lambda c: c is None,
                timeout=TIMEOUT, what="good to be deleted",
            )  # fmt: skip
            host = await client.get(BAREMETALHOSTS, infra, str(host_name))
            assert "consumerRef" not in host["spec"] and "image" not in host["spec"]
            assert host["status"]["provisioning"]["state"] == "available"
            assert await get_or_none(client, SECRETS, infra, copy) is None


async def test_no_hostclaim_controller_without_its_crds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On an API server that serves BareMetalHosts but no HostClaims (a cluster where only the
    host CRDs are installed) the operator runs without the HostClaim controller and says so."""
    crds = tmp_path / "crds"
    crds.mkdir()
    for name in ("metal3.io_baremetalhosts.yaml", "metal3.io_hardwaredata.yaml"):
        shutil.copy(REPO / "crds" / name, crds / name)
    server = ServerProcess(tmp_path / "data", crds, [])
    await anyio.to_thread.run_sync(server.start)
    try:
        caplog.set_level(logging.INFO, logger="metal3.operator")
        async with (
            await KubeClient.connect(str(server.kubeconfig)) as client,
            running_operator(server.kubeconfig, FixtureWorld()) as operator,
        ):
            assert operator.hostclaims is None
            await client.create(SECRETS, secret("h1-bmc", "default"))
            await client.create(BAREMETALHOSTS, labelled_host("h1", "default", {}))
            await eventually(
                lambda: client.get(BAREMETALHOSTS, "default", "h1"),
                lambda h: ((h.get("status") or {}).get("provisioning") or {}).get("state")
                == "available",
                timeout=TIMEOUT, what="the host controller to run all the same",
            )  # fmt: skip
        assert "hostclaims are not served (no CRD): no HostClaim controller" in caplog.text
    finally:
        await anyio.to_thread.run_sync(server.stop)


async def test_claim_in_the_hosts_namespace_needs_no_policy(
    kubeconfig: Path, namespace: str
) -> None:
    """Without any HostDeployPolicy a claim binds hosts of its own namespace; its copy there is
    owned by it, and a long claim name (longer than a label value may be) is no problem."""
    name = "a-claim-with-a-rather-long-name-" + "x" * 60
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await add_host(client, namespace, "h1", {"pool": "p"})
        await create_secret(client, "ud", namespace, userData="#cloud-config\n")
        async with running_operator(kubeconfig, FixtureWorld(), settings=FAST):
            await wait_available(client, namespace, ["h1"])
            selector = {"matchLabels": {"pool": "p"}}
            await client.create(
                HOSTCLAIMS, hostclaim(name, namespace, selector, image=IMAGE, user_data="ud")
            )
            claim = await eventually(
                lambda: claim_of(client, namespace, name),
                lambda c: condition_is(c, "Synchronized", "True", "ConfigurationSynced")
                and bound_to(c) == "h1",
                timeout=TIMEOUT, what="the claim bound and synchronized",
            )  # fmt: skip
            copy = await client.get(
                SECRETS, namespace, copy_name(claim["metadata"]["uid"], "userdata")
            )
            owners = copy["metadata"]["ownerReferences"]
            assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
                ("HostClaim", name, claim["metadata"]["uid"])
            ]
            assert copy["metadata"]["annotations"]["hostclaim.metal3.io/name"] == name
            await client.delete(HOSTCLAIMS, namespace, name)
            await eventually(
                lambda: claim_of(client, namespace, name), lambda c: c is None,
                timeout=TIMEOUT, what="the claim to go",
            )  # fmt: skip
            host = await client.get(BAREMETALHOSTS, namespace, "h1")
            assert "consumerRef" not in host["spec"]


async def test_a_claim_whose_host_is_deleted_says_so_and_is_not_rebound(
    kubeconfig: Path, namespace: str
) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        for name in ("h1", "h2"):
            await add_host(client, namespace, name, {"pool": "p"})
        async with running_operator(kubeconfig, FixtureWorld(), settings=FAST):
            await wait_available(client, namespace, ["h1", "h2"])
            await client.create(
                HOSTCLAIMS, hostclaim("c", namespace, {"matchLabels": {"pool": "p"}})
            )
            claim = await wait_bound(client, namespace, "c")
            host = bound_to(claim)
            other = "h2" if host == "h1" else "h1"
            await client.delete(BAREMETALHOSTS, namespace, str(host))
            claim = await eventually(
                lambda: claim_of(client, namespace, "c"),
                lambda c: condition_is(c, "Associated", "False", "MissingBareMetalHost"),
                timeout=TIMEOUT, what="the claim to report its host missing",
            )  # fmt: skip
            assert f"{namespace}/{host}" in str(condition(claim, "Associated"))
            await anyio.sleep(2)
            spare = await client.get(BAREMETALHOSTS, namespace, other)
            assert "consumerRef" not in spare["spec"]
            # Nothing to release: the finalizer goes at once.
            await client.delete(HOSTCLAIMS, namespace, "c")
            await eventually(
                lambda: claim_of(client, namespace, "c"), lambda c: c is None,
                timeout=TIMEOUT, what="the claim to go",
            )  # fmt: skip


async def test_deleting_a_claim_removes_its_copy_the_cache_has_not_seen(
    kubeconfig: Path, namespace: str
) -> None:
    """The copy in the hosts' namespace (no owner reference can collect it there) is deleted
    with its claim even when the operator's Secret cache does not show it (a watch lagging
    behind the copy's creation)."""
    infra, tenant = f"{namespace}-infra", f"{namespace}-tenant"
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, infra)
        await make_namespace(client, tenant)
        await add_host(client, infra, "h1", {"pool": "p"})
        await client.create(HOSTDEPLOYPOLICIES, policy(infra, names=[tenant]))
        await create_secret(client, "ud", tenant, userData="#cloud-config\n")
        async with running_operator(kubeconfig, FixtureWorld(), settings=FAST) as operator:
            await wait_available(client, infra, ["h1"])
            claim = hostclaim("c", tenant, {"matchLabels": {"pool": "p"}}, powered_on=False,
                              image=IMAGE, user_data="ud")  # fmt: skip
            await client.create(HOSTCLAIMS, claim)
            synced = await eventually(
                lambda: claim_of(client, tenant, "c"),
                lambda c: condition_is(c, "Synchronized", "True", "ConfigurationSynced"),
                timeout=TIMEOUT, what="the claim synchronized",
            )  # fmt: skip
            copy = copy_name(synced["metadata"]["uid"], "userdata")
            assert await get_or_none(client, SECRETS, infra, copy) is not None
            reconciler = operator.hostclaims
            assert reconciler is not None
            store = reconciler.secrets.store

            async def cached_copy() -> Any:
                return store.get(infra, copy)

            await eventually(cached_copy, lambda s: s is not None, timeout=TIMEOUT,
                             what="the cache to see the copy")  # fmt: skip
            store.remove((infra, copy))
            await client.delete(HOSTCLAIMS, tenant, "c")
            await eventually(
                lambda: claim_of(client, tenant, "c"), lambda c: c is None,
                timeout=TIMEOUT, what="the claim to go",
            )  # fmt: skip
            host = await client.get(BAREMETALHOSTS, infra, "h1")
            assert "consumerRef" not in host["spec"]
            assert await get_or_none(client, SECRETS, infra, copy) is None


async def test_a_secret_already_named_like_the_copy_is_never_taken_over(
    kubeconfig: Path, namespace: str
) -> None:
    """A Secret of the hosts' namespace that happens to bear the copy's name (not labelled as
    this claim's copy) is neither overwritten with the tenant's data, nor given to the host
    as its user data, nor deleted with the claim; the claim says why it is not synchronized."""
    infra, tenant = f"{namespace}-infra", f"{namespace}-tenant"
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, infra)
        await make_namespace(client, tenant)
        await add_host(client, infra, "h1", {"pool": "p"})
        await client.create(HOSTDEPLOYPOLICIES, policy(infra, names=[tenant]))
        await create_secret(client, "ud", tenant, userData="#cloud-config\n")
        async with running_operator(kubeconfig, FixtureWorld(), settings=FAST):
            await wait_available(client, infra, ["h1"])
            selector = {"matchLabels": {"pool": "p"}}
            await client.create(HOSTCLAIMS, hostclaim("c", tenant, selector, powered_on=False))
            bound = await wait_bound(client, tenant, "c")
            name = copy_name(bound["metadata"]["uid"], "userdata")
            await create_secret(client, name, infra, userData=BMC_PASSWORD)
            theirs = await client.get(SECRETS, infra, name)
            claim = await client.get(HOSTCLAIMS, tenant, "c")
            claim["spec"]["userData"] = {"name": "ud"}
            await client.replace(HOSTCLAIMS, claim)
            refused = await eventually(
                lambda: claim_of(client, tenant, "c"),
                lambda c: condition_is(c, "Synchronized", "False", "UserDataSecretSyncFailure"),
                timeout=TIMEOUT, what="the claim to refuse the taken name",
            )  # fmt: skip
            assert "exists and is not this claim's copy" in str(condition(refused, "Synchronized"))
            assert not leaks(refused)
            host = await client.get(BAREMETALHOSTS, infra, "h1")
            assert "userData" not in host["spec"]
            await client.delete(HOSTCLAIMS, tenant, "c")
            await eventually(
                lambda: claim_of(client, tenant, "c"), lambda c: c is None,
                timeout=TIMEOUT, what="the claim to go",
            )  # fmt: skip
            after = await client.get(SECRETS, infra, name)
            assert after["data"] == theirs["data"]
            assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]


async def test_a_claim_deleted_while_its_host_provisions_is_held_until_deprovisioned(
    kubeconfig: Path, namespace: str
) -> None:
    """The host is still provisioning (waiting for user data its Secret lacks) when the claim
    is deleted: the claim stays, its host still naming it, until the host is deprovisioned
    and available again; then the host is free and the claim gone."""
    world = FixtureWorld()
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await make_namespace(client, namespace)
        await add_host(client, namespace, "h1", {"pool": "p"})
        await create_secret(client, "ud", namespace, other="no userData key")
        async with running_operator(kubeconfig, world, settings=FAST):
            await wait_available(client, namespace, ["h1"])
            await client.create(
                HOSTCLAIMS,
                hostclaim("c", namespace, {"matchLabels": {"pool": "p"}}, image=IMAGE,
                          user_data="ud"),
            )  # fmt: skip
            await eventually(
                lambda: client.get(BAREMETALHOSTS, namespace, "h1"),
                lambda h: h["status"]["provisioning"]["state"] == "provisioning"
                and h["status"].get("errorType") == "provisioning error",
                timeout=TIMEOUT, what="h1 waiting in provisioning for its user data",
            )  # fmt: skip
            before = await client.get(BAREMETALHOSTS, namespace, "h1")
            uid = before["metadata"]["uid"]
            seen: list[tuple[str, str | None]] = []  # every version: state, consumer

            async def record() -> None:
                async for event in client.watch(
                    BAREMETALHOSTS, namespace,
                    resource_version=before["metadata"]["resourceVersion"],
                ):  # fmt: skip
                    obj = event.object
                    if event.type == "MODIFIED" and obj["metadata"]["name"] == "h1":
                        ref = obj["spec"].get("consumerRef") or {}
                        seen.append((obj["status"]["provisioning"]["state"], ref.get("name")))

            async with anyio.create_task_group() as tg:
                tg.start_soon(record)
                await client.delete(HOSTCLAIMS, namespace, "c")
                await eventually(
                    lambda: claim_of(client, namespace, "c"), lambda c: c is None,
                    timeout=TIMEOUT, what="the claim to go",
                )  # fmt: skip

                async def watched() -> list[tuple[str, str | None]]:
                    return seen

                await eventually(
                    watched, lambda v: bool(v) and v[-1][1] is None,
                    timeout=TIMEOUT, what="the watch to show h1 freed",
                )  # fmt: skip
                tg.cancel_scope.cancel()
            states = [state for state, _ in seen]
            assert "deprovisioning" in states, seen
            # The host named the claim until it was deprovisioned and available again.
            freed = next(i for i, (_, consumer) in enumerate(seen) if consumer is None)
            assert all(consumer == "c" for _, consumer in seen[:freed]), seen
            assert seen[freed][0] == "available" and "deprovisioning" in states[:freed], seen
            host = await client.get(BAREMETALHOSTS, namespace, "h1")
            assert host["status"]["provisioning"]["state"] == "available"
            assert "consumerRef" not in host["spec"] and "image" not in host["spec"]
            assert world.count(uid, "provision") == 0  # nothing was written to its disk
