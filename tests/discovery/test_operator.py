"""Discovery with the operator running (the fixture provisioner, whose calls are counted): a
discovered host settles as unmanaged with `operationalStatus: discovered` and its hardware,
and stays so with the BMC address alone; once its credentials are added it registers and
reaches available without being inspected again (upstream's NeedsHardwareInspection)."""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from baremetalhost.kit import cluster, running_operator, secret, state
from discovery.kit import inventory
from metal3.agent.client import AgentClient
from metal3.agentapi.ratelimit import RateLimit
from metal3.agentapi.server import AgentApiOptions, ensure_tls
from metal3.discovery.service import DiscoveryOptions
from metal3.inspection import hardware_details_from_inventory
from metal3.kube.resources import HARDWAREDATA, SECRETS
from metal3.provisioner.fixture import FixtureWorld

pytestmark = pytest.mark.anyio


async def test_discovered_host_registers_once_credentials_are_added_without_inspection(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    tls = ensure_tls(tmp_path / "tls", "127.0.0.1")
    world = FixtureWorld()
    agent_api = AgentApiOptions(
        listen="127.0.0.1:0", cert_file=tls.cert, key_file=tls.key, rate_limit=RateLimit(rate=0)
    )
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(
            kubeconfig,
            world,
            namespace=namespace,
            agent_api=agent_api,
            discovery=DiscoveryOptions(namespace=namespace),
        ) as operator,
    ):
        macs = ["02:cc:00:00:00:01", "02:cc:00:00:00:02"]
        doc = inventory(macs, serial="OPS-1", pxe=macs[0], bmc_address="192.0.2.200")
        with AgentClient(operator.agent_url, ca_file=tls.ca_cert) as agent:

            def discover() -> dict[str, object]:
                while True:  # 503 until the agent API has listed the hosts
                    try:
                        found = agent.lookup(macs, system_uuid=str(uuid.uuid4()))
                        break
                    except Exception as exc:
                        if getattr(exc, "status", None) != 503:
                            raise
                assert found.discovery_token
                return agent.send_inventory(found.discovery_token, doc)

            answer = await anyio.to_thread.run_sync(discover)
        assert answer["created"] is True
        obj = await c.wait_for(
            "ops-1",
            lambda o: (
                state(o) == "unmanaged"
                and "baremetalhost.metal3.io/status"
                not in ((o or {}).get("metadata", {}).get("annotations") or {})
            ),
            what="unmanaged, status restored",
        )
        status = obj["status"]
        assert status["operationalStatus"] == "discovered"
        assert status["hardware"] == hardware_details_from_inventory(doc)
        assert status.get("errorType", "") == ""
        assert obj["spec"]["bmc"] == {"address": "ipmi://192.0.2.200", "credentialsName": ""}
        uid = c.uid(obj)
        assert world.count(uid, "register") == 0

        # The user adds credentials (and, here, an address the fixture reaches).
        await c.client.create(SECRETS, secret("ops-1-bmc", namespace))
        await c.patch(
            "ops-1",
            {"spec": {"bmc": {"address": "ipmi://10.0.0.9", "credentialsName": "ops-1-bmc"}}},
        )
        obj = await c.wait_state("ops-1", "available", timeout=60)
        assert obj["status"]["operationalStatus"] == "OK"
        assert obj["status"]["hardware"] == hardware_details_from_inventory(doc)
        assert world.count(uid, "register") >= 1
        assert world.count(uid, "inspect") == 0  # never inspected again
        assert "inspect" not in (obj["status"].get("operationHistory") or {}) or not (
            obj["status"]["operationHistory"]["inspect"].get("start")
        )
        data = await c.client.get(HARDWAREDATA, namespace, "ops-1")
        assert data["spec"]["hardware"] == status["hardware"]
