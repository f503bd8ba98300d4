"""Discovery's settings from a watched ConfigMap (`--discovery-configmap`): switched on and
off, its namespace and cap changed, without a restart; a wrong value changes nothing; the
flags apply again once it is deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from baremetalhost.kit import cluster, running_operator
from metal3.agent.client import AgentApiError, AgentClient
from metal3.agentapi.ratelimit import RateLimit
from metal3.agentapi.server import AgentApiOptions, ensure_tls
from metal3.discovery.configmap import parse_reference, settings_from
from metal3.discovery.service import DiscoveryOptions
from metal3.kube.client import MERGE_PATCH
from metal3.kube.resources import CONFIGMAPS
from metal3.provisioner.fixture import FixtureWorld

pytestmark = pytest.mark.anyio

FLAGS = DiscoveryOptions(namespace="racks", hosts_per_minute=10)


def test_settings_over_the_flags() -> None:
    assert settings_from({}, FLAGS) == FLAGS
    assert settings_from({}, None) is None
    assert settings_from({"enabled": "false"}, FLAGS) is None
    assert settings_from({"enabled": "true"}, None, "ops") == DiscoveryOptions(namespace="ops")
    assert settings_from({"namespace": "b", "perMinute": "3"}, FLAGS) == DiscoveryOptions(
        namespace="b", hosts_per_minute=3
    )
    for data, message in [
        ({"enabled": "yes"}, "enabled must be"),
        ({"perMinute": "0"}, "perMinute must be"),
        ({"perMinute": "many"}, "perMinute must be"),
        ({"namespace": ""}, "namespace must be"),
        ({"namespace": "Racks_2"}, "is not a namespace name"),
        ({"namespace": "x" * 64}, "is not a namespace name"),
    ]:
        with pytest.raises(ValueError, match=message):
            settings_from(data, FLAGS)
    with pytest.raises(ValueError, match="not watched"):
        settings_from({"namespace": "other"}, FLAGS, "racks")
    assert parse_reference("metal3/discovery") == ("metal3", "discovery")
    for wrong in ("discovery", "/x", "a/", "a/b/c"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            parse_reference(wrong)


async def test_the_configmap_switches_discovery_live(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    tls = ensure_tls(tmp_path / "tls", "127.0.0.1")
    agent_api = AgentApiOptions(
        listen="127.0.0.1:0", cert_file=tls.cert, key_file=tls.key, rate_limit=RateLimit(rate=0)
    )
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(
            kubeconfig,
            FixtureWorld(),
            namespace=namespace,
            agent_api=agent_api,
            discovery_configmap=f"{namespace}/metal3-discovery",
        ) as operator,
    ):
        agent = AgentClient(operator.agent_url, ca_file=tls.ca_cert)
        n = iter(range(1, 100))

        def lookup() -> Any:
            mac = f"02:ee:00:00:00:{next(n):02x}"
            try:
                return agent.lookup([mac]).discovery_token is not None
            except AgentApiError as exc:
                return exc.status

        async def wait_lookup(expected: Any) -> None:
            with anyio.fail_after(20):
                while (got := await anyio.to_thread.run_sync(lookup)) != expected:
                    assert got in (404, 503, True, 429), got
                    await anyio.sleep(0.1)

        try:
            await wait_lookup(404)  # no ConfigMap, no --discovery: off
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "metal3-discovery", "namespace": namespace},
                "data": {"enabled": "true", "perMinute": "2"},
            }
            await c.client.create(CONFIGMAPS, body)
            await wait_lookup(True)
            assert operator.agent_api is not None
            assert operator.agent_api.discovery.options.hosts_per_minute == 2
            assert operator.agent_api.discovery.options.namespace == namespace
            await wait_lookup(429)  # the cap of 2 per minute, as the ConfigMap says

            async def patch(data: dict[str, str]) -> None:
                await c.client.patch(
                    CONFIGMAPS, namespace, "metal3-discovery", {"data": data},
                    content_type=MERGE_PATCH,
                )  # fmt: skip

            await patch({"enabled": "false"})
            await wait_lookup(404)
            await patch({"enabled": "maybe"})  # refused: stays off
            await anyio.sleep(0.5)
            assert await anyio.to_thread.run_sync(lookup) == 404
            await patch({"enabled": "true", "perMinute": "50"})
            await wait_lookup(True)
            await c.client.delete(CONFIGMAPS, namespace, "metal3-discovery")
            await wait_lookup(404)  # back to the flags: off
        finally:
            agent.close()
