"""Discovery on the lab: `metal3 lab up --unregistered 5` powers on five hosts nobody
registered, which network-boot the agent (as newly racked servers would); with the operator
discovering into the test's namespace, each becomes a BareMetalHost with its hardware, a
HardwareData and labels, `operationalStatus: discovered`. Adding credentials to one (its BMC
address and a Secret from lab.json) registers it, and it reaches available through cleaning
by an agent the operator boots itself, without a second inspection: the lab's agent log shows
no inspect ever run, and the host's agent record holds no inspect result."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from baremetalhost.kit import FAST, cluster, running_operator, state
from metal3.agentapi.ratelimit import RateLimit
from metal3.agentapi.records import record_name
from metal3.agentapi.server import AgentApiOptions
from metal3.controllers.baremetalhost import Settings
from metal3.discovery.labels import label_value
from metal3.discovery.service import DiscoveryOptions
from metal3.kube.client import KubeClient
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA, SECRETS
from metal3.lab.profiles import PROFILES, system_serial
from metal3.operator import Operator
from metal3.provisioner.direct.factory import DirectProvisionerFactory
from metal3.provisioner.direct.lab import LabConfig
from metal3.provisioner.direct.settings import DirectSettings
from metal3.provisioner.fixture import FixtureWorld
from provisioner.labkit import LabRun, lab_up

pytestmark = pytest.mark.anyio

SPARES = 5
DIRECT = DirectSettings(
    agent_timeout=120.0,
    poll_interval=0.3,
    agent_poll_interval=2.0,
    bmc_call_timeout=10.0,
    bmc_wait=0.5,
    power_timeout=60.0,
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    data_dir = tmp_path_factory.mktemp("discovery-lab")
    with lab_up(
        data_dir, "--hosts", "0", "--unregistered", str(SPARES), "--power-delay", "0"
    ) as run:
        yield run


@asynccontextmanager
async def discovering_operator(
    kubeconfig: Path, namespace: str, lab: LabRun, fsm: Settings
) -> AsyncIterator[Operator]:
    """The operator wired to the lab as `metal3 standalone --lab DIR --discovery` wires it."""
    config = LabConfig.load(lab.dir)
    settings = replace(DIRECT, media=config.boot_media)
    agent_api = AgentApiOptions(
        listen=config.agent_listen,
        cert_file=config.cert_file,
        key_file=config.key_file,
        ca_file=config.ca_file,
        rate_limit=RateLimit(),
        poll_seconds=5.0,
    )
    async with running_operator(
        kubeconfig,
        FixtureWorld(),
        namespace=namespace,
        settings=fsm,
        provisioners=DirectProvisionerFactory(settings),
        agent_api=agent_api,
        provisioner="direct",
        direct=settings,
        discovery=DiscoveryOptions(namespace=namespace),
    ) as operator:
        yield operator


def spares(lab: LabRun) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in lab.doc["hosts"] if not h["registered"]}


async def discovered_hosts(client: KubeClient, namespace: str) -> list[dict[str, Any]]:
    items, _ = await client.list(BAREMETALHOSTS, namespace)
    return [
        h
        for h in items
        if state(h) == "unmanaged" and (h.get("status") or {}).get("hardware") is not None
    ]


async def test_unregistered_lab_hosts_are_discovered_then_one_registers_without_inspection(
    kubeconfig: Path, namespace: str, lab: LabRun
) -> None:
    hosts = spares(lab)
    assert len(hosts) == SPARES
    for name in hosts:  # powered on at lab start, booted from the network into the agent
        assert lab.state(name)["power"] == "on" and lab.state(name)["boot_source"] == "network"
    by_serial = {system_serial(name).lower(): name for name in hosts}

    async with (
        cluster(kubeconfig, namespace) as c,
        discovering_operator(kubeconfig, namespace, lab, replace(FAST, error_backoff_unit=5.0)),
    ):
        with anyio.fail_after(180):  # the agents retry an absent operator every <= 30 s
            while len(found := await discovered_hosts(c.client, namespace)) < SPARES:
                await anyio.sleep(0.5)
        assert sorted(h["metadata"]["name"] for h in found) == sorted(by_serial)
        for host in found:
            lab_name = by_serial[host["metadata"]["name"]]
            lab_host = hosts[lab_name]
            profile = PROFILES[lab_host["profile"]]
            status = host["status"]
            assert status["operationalStatus"] == "discovered"
            assert status.get("errorType", "") == ""
            hardware = status["hardware"]
            assert hardware["systemVendor"]["serialNumber"] == system_serial(lab_name)
            assert {n["mac"] for n in hardware["nics"]} == set(lab_host["macs"])
            assert host["spec"]["bootMACAddress"] == lab_host["boot_mac"]
            assert (
                "credentialsName" not in host["spec"].get("bmc", {})
                or not (host["spec"]["bmc"]["credentialsName"])
            )
            labels = host["metadata"]["labels"]
            assert labels["discovery.metal3.io/discovered"] == "true"
            assert labels["hardware.metal3.io/cpu-count"] == str(profile.cpus)
            assert labels["hardware.metal3.io/arch"] == hardware["cpu"]["arch"]
            assert labels["hardware.metal3.io/memory-gib"] == str(
                (hardware["ramMebibytes"] + 512) // 1024
            )
            assert labels["hardware.metal3.io/vendor"] == label_value(profile.vendor)
            assert labels["hardware.metal3.io/product"] == label_value(profile.product)
            data = await c.client.get(HARDWAREDATA, namespace, host["metadata"]["name"])
            assert data["spec"]["hardware"] == hardware
            assert " running inspect " not in lab.agent_log(lab_name)

        # The user registers one: its BMC address and a credentials Secret, from lab.json.
        target = sorted(by_serial)[0]
        lab_name = by_serial[target]
        lab_host = hosts[lab_name]
        credentials = lab_host["credentials"]
        await c.client.create(
            SECRETS,
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": f"{target}-bmc", "namespace": namespace},
             "data": {k: base64.b64encode(v.encode()).decode() for k, v in credentials.items()}},
        )  # fmt: skip
        await c.patch(
            target,
            {"spec": {"bmc": {"address": lab_host["bmc_address"],
                              "credentialsName": f"{target}-bmc"}}},
        )  # fmt: skip
        obj = await c.wait_state(target, "available", timeout=300)
        assert obj["status"]["operationalStatus"] == "OK"
        assert obj["status"]["hardware"]["systemVendor"]["serialNumber"] == system_serial(lab_name)
        history = obj["status"].get("operationHistory") or {}
        assert not (history.get("inspect") or {}).get("start"), history
        log = lab.agent_log(lab_name)
        assert " running inspect " not in log, log[-3000:]
        # The agent the host booted by itself (boot 1) sent the inventory and was never given
        # the host's token; the one the operator booted (a later boot) did the cleaning.
        first, _, later = log.partition(" boot 2 ")
        assert "created host" in first and "token received" not in first, log[-3000:]
        assert "token received" in later and " running clean " in later, log[-3000:]
        record = await c.client.get(SECRETS, namespace, record_name(target))
        results = [
            json.loads(base64.b64decode(v))
            for k, v in record["data"].items()
            if k.startswith("result.")
        ]
        assert {r["command"] for r in results} >= {"clean"}
        assert "inspect" not in {r["command"] for r in results}
        # The others stay discovered: no credentials, nothing done to them.
        for other in set(by_serial) - {target}:
            again = await c.client.get(BAREMETALHOSTS, namespace, other)
            assert state(again) == "unmanaged"
            assert again["status"]["operationalStatus"] == "discovered"
