"""Every BMC call outliving its reconcile (`bmc_wait` near 0, as a loaded BMC makes them):
the direct provisioner still takes three lab hosts (Redfish, Redfish virtual media, IPMI)
through registration, inspection and cleaning to `available` with one agent boot per step.

Each such call finishes in the background and wakes its host. The outcome of the agent boot
for inspection was left unclaimed (the next reconcile found the host on and its agent at work),
and the boot for cleaning a few seconds later took it as its own: no request reached the BMC,
and the host waited `power_timeout` for a power on nobody had asked for (seen in the
benchmark as a setup of two minutes). The limit below is well under `power_timeout`, and
power requests are not sent again before it (`power_resend_interval`), or the re-send would
hide that wait.

Each host's agent also goes on for 3 s after its BMC reports it off (`--power-off-lag`), as
the IPMI simulator's hosts did under load (its answer comes before the lab hears of it): the
inspection boot's agent, still up as the host became `preparing`, was handed the cleaning and
the cleaning boot cleaned again. The provisioner now ends the agent's session before it asks
for a power off: the agent is told so (410) and exits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from baremetalhost.kit import FAST, cluster, state
from metal3.kube.resources import BAREMETALHOSTS, SECRETS
from metal3.provisioner.direct.settings import DirectSettings
from provisioner.labkit import LabRun, lab_operator, lab_up

pytestmark = pytest.mark.anyio

POWER_TIMEOUT = 150.0
SLOW_BMC = DirectSettings(
    agent_timeout=120.0,
    poll_interval=0.3,
    agent_poll_interval=2.0,
    bmc_call_timeout=20.0,
    bmc_wait=0.001,
    power_timeout=POWER_TIMEOUT,
    power_resend_interval=POWER_TIMEOUT,
)
HOSTS = ("host-0", "host-1", "host-2")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRun]:
    """host-0 Redfish (network boot), host-1 Redfish virtual media, host-2 IPMI."""
    data_dir = tmp_path_factory.mktemp("background-calls-lab")
    with lab_up(data_dir, "--hosts", "3", "--power-delay", "0", "--power-off-lag", "3") as run:
        yield run


async def test_every_bmc_call_in_the_background_one_agent_boot_per_step(
    kubeconfig: Path, namespace: str, lab: LabRun
) -> None:
    kinds = {name: lab.hosts[name]["kind"] for name in HOSTS}
    assert sorted(kinds.values()) == ["ipmi", "redfish", "redfish-virtualmedia"], kinds
    async with (
        cluster(kubeconfig, namespace) as c,
        lab_operator(kubeconfig, namespace, lab, SLOW_BMC, replace(FAST, error_backoff_unit=60)),
    ):
        manifests = lab.manifests(namespace)
        for name in HOSTS:
            for document in manifests[name]:
                if document["kind"] == "BareMetalHost":
                    document["spec"]["online"] = True
                    await c.client.create(BAREMETALHOSTS, document)
                else:
                    await c.client.create(SECRETS, document)
        with anyio.fail_after(POWER_TIMEOUT / 2):
            for name in HOSTS:
                obj = await c.wait_for(
                    name, lambda o: state(o) == "available", timeout=POWER_TIMEOUT / 2
                )
                assert obj is not None and not obj["status"].get("errorMessage"), obj["status"]
    for name in HOSTS:
        log = lab.agent_log(name)
        assert log.count(" running inspect ") == 1, (name, log[-3000:])
        assert log.count(" running clean ") == 1, (name, log[-3000:])
        assert log.count("starting the agent") == 2, (name, log[-3000:])
