"""The agent's side of discovery (`metal3.agent.runner`): given a discovery token it sends its
inventory (read from a recorded tree), then keeps looking up through the refusals (403: its
host is not one where an agent runs yet) until the host is registered, and then works as any
agent: token, command, result."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import anyio
import pytest

from discovery.kit import serving
from metal3.agent.inventory import collect_inventory
from metal3.agent.runner import Runner, RunnerOptions
from metal3.agentapi.records import AgentRecords
from metal3.kube.client import MERGE_PATCH
from metal3.kube.resources import BAREMETALHOSTS

pytestmark = pytest.mark.anyio

SYSROOT = Path(__file__).resolve().parents[1] / "agent" / "data" / "sysroot-vm"


async def test_discovered_agent_waits_for_its_host_then_works(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    macs = [i["mac_address"] for i in collect_inventory(SYSROOT)["interfaces"]]
    name = macs[0].replace(":", "-")  # the recorded machine has no serial
    async with serving(kubeconfig, namespace, tmp_path) as s:
        asked: list[str] = []

        def inspect(args: dict[str, object]) -> dict[str, object]:
            asked.append("inspect")  # stands in for the real work (no disk is touched)
            return {"done": True}

        runner = Runner(
            RunnerOptions(
                api_url=s.url,
                ca_file=s.ca_file,
                state_dir=tmp_path / "agent-state",
                macs=macs,
                system_uuid=str(uuid.uuid4()),
                max_commands=1,
                lookup_interval=0.2,
                inventory_root=SYSROOT,
                handlers={"inspect": inspect},
            )
        )
        exit_codes: list[int] = []
        thread = threading.Thread(target=lambda: exit_codes.append(runner.run()), daemon=True)
        thread.start()
        with anyio.fail_after(30):
            while s.api.hosts.informer.store.get(namespace, name) is None:
                await anyio.sleep(0.05)
        assert runner.discovered
        await anyio.sleep(1.0)  # several lookups, each refused (403: the host is new)
        assert thread.is_alive() and not exit_codes and not asked
        host = s.api.hosts.informer.store.get(namespace, name)
        assert host is not None
        assert not (await AgentRecords(s.client).get(host)).token_hash  # no token given yet

        # The host is registered and inspecting (as the operator would have it): an agent
        # runs there, and this one gets its token and its command.
        await s.client.patch(
            BAREMETALHOSTS, namespace, name,
            {"status": {"operationalStatus": "OK", "errorMessage": "", "poweredOn": True,
                        "provisioning": {"state": "inspecting", "ID": ""},
                        "operationHistory": {"inspect": {"start": "2026-01-01T00:00:00Z"}}}},
            subresource="status", content_type=MERGE_PATCH,
        )  # fmt: skip
        await anyio.to_thread.run_sync(lambda: thread.join(60))
        assert exit_codes == [0] and asked == ["inspect"]
        record = await AgentRecords(s.client).get(host)
        assert [r.command for r in record.results.values()] == ["inspect"]
