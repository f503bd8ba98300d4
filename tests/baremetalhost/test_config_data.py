"""userData / networkData / metaData Secrets, as upstream reads them: only from the host's own
namespace, and a Secret that is missing (or lacks its key) stops provisioning with a clear error
until it appears. The fixture provisioner records what it was asked to provision, so the tests
see exactly which configuration data reached the hardware."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from baremetalhost.kit import IMAGE, cluster, host, running_operator, state
from metal3.api.baremetalhost import BareMetalHost
from metal3.kube.client import KubeClient
from metal3.kube.resources import EVENTS, NAMESPACES, SECRETS
from metal3.provisioner.base import ProvisionData, Result
from metal3.provisioner.fixture import FixtureProvisioner, FixtureProvisionerFactory, FixtureWorld

pytestmark = pytest.mark.anyio

USER_DATA = "#cloud-config\nhostname: from-the-right-secret\n"
OTHER_NAMESPACE_DATA = "#cloud-config\nhostname: STOLEN-FROM-ANOTHER-NAMESPACE\n"


class RecordingFixtureProvisioner(FixtureProvisioner):
    def __init__(self, seen: list[ProvisionData], *args: Any) -> None:
        super().__init__(*args)
        self.seen = seen

    async def provision(self, data: ProvisionData) -> Result:
        self.seen.append(data)
        return await super().provision(data)


class RecordingFixtureFactory(FixtureProvisionerFactory):
    """The fixture provisioner, remembering the data of every provision call."""

    def __init__(self, world: FixtureWorld) -> None:
        super().__init__(world)
        self.provisioned: list[ProvisionData] = []

    def for_host(self, host: BareMetalHost) -> FixtureProvisioner:
        return RecordingFixtureProvisioner(
            self.provisioned, self.world, host, self.behaviours(host)
        )


def data_secret(name: str, namespace: str, **values: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def error_of(obj: dict[str, Any] | None) -> tuple[str, str]:
    status = (obj or {}).get("status") or {}
    return status.get("errorType", ""), status.get("errorMessage", "")


async def event_messages(client: KubeClient, namespace: str) -> str:
    items, _ = await client.list(EVENTS, namespace)
    return "\n".join(str(e.get("message")) for e in items)


async def test_missing_user_data_secret_stops_provisioning_until_it_appears(
    kubeconfig: Path, namespace: str
) -> None:
    async with cluster(kubeconfig, namespace) as c:
        factory = RecordingFixtureFactory(c.world)
        async with running_operator(kubeconfig, c.world, namespace=namespace, provisioners=factory):
            await c.apply_host(host("d1", namespace, image=IMAGE, userData={"name": "d1-user"}))
            obj = await c.wait_for(
                "d1", lambda o: error_of(o)[0] == "provisioning error", what="provisioning error"
            )
            assert state(obj) == "provisioning"
            message = error_of(obj)[1]
            assert message.startswith('could not retrieve userData secret "d1-user"'), message
            assert "not found" in message
            assert obj is not None and obj["status"]["operationalStatus"] == "error"
            assert obj["status"]["provisioningFailCount"] == 0  # nothing was attempted
            assert factory.provisioned == []  # provisioning did not go ahead without the data
            await anyio.sleep(0.5)  # backoff retries (20 ms units) keep it waiting in place
            obj = await c.get("d1")
            assert state(obj) == "provisioning" and factory.provisioned == []
            assert obj is not None and obj["status"]["errorCount"] >= 2

            # The Secret appears: its watch wakes the host, which provisions with it.
            await c.client.create(SECRETS, data_secret("d1-user", namespace, userData=USER_DATA))
            obj = await c.wait_state("d1", "provisioned")
            assert error_of(obj) == ("", "")
            assert obj["status"]["errorCount"] == 0
            assert [d.user_data for d in factory.provisioned] == [USER_DATA]
            assert c.world.count(c.uid(obj), "provision") == 1


async def test_reference_to_another_namespace_is_refused(kubeconfig: Path, namespace: str) -> None:
    other = f"o-{uuid.uuid4().hex[:8]}"
    async with cluster(kubeconfig, namespace) as c:
        await c.client.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}
        )
        await c.client.create(SECRETS, data_secret("shared", other, userData=OTHER_NAMESPACE_DATA))
        # A Secret of the same name in the host's namespace must not be taken instead either.
        await c.client.create(SECRETS, data_secret("shared", namespace, userData=USER_DATA))
        factory = RecordingFixtureFactory(c.world)
        async with running_operator(kubeconfig, c.world, namespace=namespace, provisioners=factory):
            ref = {"name": "shared", "namespace": other}
            await c.apply_host(host("x1", namespace, image=IMAGE, userData=ref))
            obj = await c.wait_for(
                "x1", lambda o: error_of(o)[0] == "provisioning error", what="provisioning error"
            )
            assert state(obj) == "provisioning"
            assert error_of(obj)[1] == (
                f'could not retrieve userData secret "{other}/shared": '
                "cross-namespace Secret references are not allowed"
            )
            await anyio.sleep(0.5)
            assert factory.provisioned == []
            recorded = orjson.dumps(await c.get("x1")).decode()
            recorded += await event_messages(c.client, namespace)
            assert "STOLEN" not in recorded and "from-the-right-secret" not in recorded

            # Pointing the reference at the host's own namespace lets it provision.
            await c.patch("x1", {"spec": {"userData": {"namespace": None}}})
            await c.wait_state("x1", "provisioned")
        assert [d.user_data for d in factory.provisioned] == [USER_DATA]


async def test_value_key_fallback_and_missing_key(kubeconfig: Path, namespace: str) -> None:
    """A Secret without the field's key is read from its ``value`` key (as upstream); with
    neither, userData and metaData are errors naming the key, networkData is simply absent."""
    async with cluster(kubeconfig, namespace) as c:
        await c.client.create(SECRETS, data_secret("k1-user", namespace, value=USER_DATA))
        await c.client.create(SECRETS, data_secret("k1-net", namespace, other="ignored"))
        await c.client.create(SECRETS, data_secret("k1-meta", namespace, other="ignored"))
        factory = RecordingFixtureFactory(c.world)
        async with running_operator(kubeconfig, c.world, namespace=namespace, provisioners=factory):
            spec = {
                "image": IMAGE,
                "userData": {"name": "k1-user"},
                "networkData": {"name": "k1-net"},
                "metaData": {"name": "k1-meta"},
            }
            await c.apply_host(host("k1", namespace, **spec))
            obj = await c.wait_for(
                "k1", lambda o: error_of(o)[0] == "provisioning error", what="provisioning error"
            )
            assert error_of(obj)[1] == (
                'could not retrieve metaData secret "k1-meta": the Secret has no key metaData '
                "(nor value)"
            )
            assert factory.provisioned == []
            await c.client.delete(SECRETS, namespace, "k1-meta")
            await c.client.create(SECRETS, data_secret("k1-meta", namespace, metaData="{}"))
            await c.wait_state("k1", "provisioned")
        [data] = factory.provisioned
        assert (data.user_data, data.network_data, data.meta_data) == (USER_DATA, None, "{}")
