"""Discovery through the agent API (over TLS, against the test API server): a lookup matching
no host gets a discovery token; the inventory sent with it makes one BareMetalHost, never
two for one system, never over an existing host, never outside the discovery namespace; bad
input is a clear 4xx."""

from __future__ import annotations

import concurrent.futures
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from discovery.kit import Served, inventory, serving, status_annotation
from metal3.agent.client import AgentClient
from metal3.inspection import hardware_details_from_inventory
from metal3.kube.client import MERGE_PATCH, ApiError
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA

pytestmark = pytest.mark.anyio

UUID_A = "8c5e2f7a-1b3d-4e5f-8a9b-0c1d2e3f4a5b"
UUID_B = "5f1d8c2e-3a4b-4c5d-9e6f-7a8b9c0d1e2f"


def macs(system: int, *nics: int) -> list[str]:
    return [f"02:aa:{system >> 8 & 0xFF:02x}:{system & 0xFF:02x}:00:{n:02x}" for n in nics]


async def hosts(served: Served) -> list[dict[str, Any]]:
    items, _ = await served.client.list(BAREMETALHOSTS, served.namespace)
    return items


async def test_an_unknown_system_becomes_a_discovered_host(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    async with serving(kubeconfig, namespace, tmp_path) as s:
        agent = s.agent()
        nics = macs(1, 0, 1)
        found = await s.call(
            lambda: agent.lookup(nics, system_uuid=UUID_A.upper(), serial_number="SN-0001")
        )
        assert found.discovery_token and found.token is None and found.uid == ""
        doc = inventory(nics, serial="SN-0001", pxe=nics[1])
        answer = await s.call(lambda: agent.send_inventory(found.discovery_token or "", doc))
        assert answer == {"host": {"namespace": namespace, "name": "sn-0001"}, "created": True}

        host = await s.client.get(BAREMETALHOSTS, namespace, "sn-0001")
        spec = {k: v for k, v in host["spec"].items() if k != "automatedCleaningMode"}  # default
        assert spec == {"online": False, "bootMACAddress": nics[1]}  # no bmc: the agent saw none
        assert host["metadata"]["labels"] == {
            "discovery.metal3.io/discovered": "true",
            "hardware.metal3.io/arch": "x86_64",
            "hardware.metal3.io/cpu-count": "2",
            "hardware.metal3.io/memory-gib": "4",
            "hardware.metal3.io/vendor": "Metal3-Lab-Inc",
            "hardware.metal3.io/product": "Lab-Box-9",
        }
        annotations = host["metadata"]["annotations"]
        assert annotations["discovery.metal3.io/system-uuid"] == UUID_A
        restored = status_annotation(host)
        assert restored["operationalStatus"] == "discovered"
        assert restored["hardware"] == hardware_details_from_inventory(doc)
        data = await s.client.get(HARDWAREDATA, namespace, "sn-0001")
        assert data["spec"]["hardware"] == restored["hardware"]
        owner = data["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("BareMetalHost", host["metadata"]["uid"])

        # The same token again (an answer lost on the way): the same host, nothing new.
        again = await s.call(lambda: agent.send_inventory(found.discovery_token or "", doc))
        assert again == {"host": {"namespace": namespace, "name": "sn-0001"}, "created": False}
        # Once the API sees the host, the system's lookups find it (no agent expected there
        # yet), and other MACs with the same serial find that it is known.
        with anyio.fail_after(10):
            while not s.api.hosts.find_by_macs(set(nics)):
                await anyio.sleep(0.02)
        refused = await s.refused(lambda: agent.lookup(nics))
        assert refused.status == 403
        refused = await s.refused(lambda: agent.lookup(macs(1, 7), serial_number="SN-0001"))
        assert refused.status == 409 and "already describes this system" in refused.message
        refused = await s.refused(lambda: agent.lookup(macs(1, 8), system_uuid=UUID_A))
        assert refused.status == 409
        assert [h["metadata"]["name"] for h in await hosts(s)] == ["sn-0001"]


async def test_bmc_address_seen_by_the_agent_and_no_serial_names_by_mac(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    async with serving(kubeconfig, namespace, tmp_path) as s:
        agent = s.agent()
        nics = macs(2, 0)
        found = await s.call(lambda: agent.lookup(nics, serial_number="Default string"))
        doc = inventory(nics, serial="To Be Filled By O.E.M.", bmc_address="192.0.2.77")
        answer = await s.call(lambda: agent.send_inventory(found.discovery_token or "", doc))
        name = nics[0].replace(":", "-")
        assert answer["host"]["name"] == name
        host = await s.client.get(BAREMETALHOSTS, namespace, name)
        assert host["spec"]["bmc"] == {"address": "ipmi://192.0.2.77", "credentialsName": ""}
        assert "discovery.metal3.io/system-uuid" not in host["metadata"]["annotations"]


async def test_bad_input_is_a_clear_4xx(kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    async with serving(kubeconfig, namespace, tmp_path) as s:
        agent = s.agent()
        nics = macs(3, 0)
        for kwargs, status, text in [
            ({"system_uuid": "not-a-uuid"}, 400, "system_uuid is not a UUID"),
            ({"serial_number": "S" * 200}, 400, "serial_number must be a string"),
        ]:
            refused = await s.refused(lambda kw=kwargs: agent.lookup(nics, **kw))  # type: ignore[misc]
            assert (refused.status, text in refused.message) == (status, True), refused
        refused = await s.refused(
            lambda: agent.request("POST", "/v1/lookup", {"mac_addresses": ["zz"]})
        )
        assert refused.status == 400

        found = await s.call(lambda: agent.lookup(nics, serial_number="SN-3"))
        token = found.discovery_token or ""
        good = inventory(nics, serial="SN-3")
        path = "/v1/discovery/inventory"
        cases: list[tuple[dict[str, Any] | None, str | None, int, str]] = [
            ({"inventory": good}, None, 401, "missing or malformed discovery token"),
            ({"inventory": good}, "A" * 43, 403, "unknown or expired discovery token"),
            ({"inventory": [1, 2]}, token, 400, "inventory must be an object"),
            ({"inventory": {"cpu": {}}}, token, 400, "the inventory cannot be used"),
            ({"inventory": inventory(macs(3, 9), serial="SN-3")}, token, 400, "MAC addresses"),
            ({"inventory": inventory(nics, serial="SN-OTHER")}, token, 400, "serial number"),
            ({"inventory": inventory(["garbage"])}, token, 400, "is not a MAC address"),
        ]
        for body, bearer, status, text in cases:
            refused = await s.refused(
                lambda b=body, t=bearer: agent.request("POST", path, b, token=t)  # type: ignore[misc]
            )
            assert refused.status == status and text in refused.message, (text, refused)
        assert await hosts(s) == []
        # Nothing an agent sends names the namespace or the name.
        sneaky = {"inventory": good, "namespace": "kube-system", "name": "admin"}
        answer = await s.call(lambda: agent.request("POST", path, sneaky, token=token))
        assert answer["host"] == {"namespace": namespace, "name": "sn-3"}
        with pytest.raises(ApiError) as missing:
            await s.client.get(BAREMETALHOSTS, "kube-system", "sn-3")
        assert missing.value.not_found


async def test_an_existing_host_is_never_overwritten(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    async with serving(kubeconfig, namespace, tmp_path) as s:
        theirs = await s.client.create(
            BAREMETALHOSTS,
            {"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
             "metadata": {"name": "sn-4", "namespace": namespace},
             "spec": {"online": True, "bootMACAddress": "02:bb:00:00:00:01"}},
        )  # fmt: skip
        agent = s.agent()
        nics = macs(4, 0)
        found = await s.call(lambda: agent.lookup(nics, system_uuid=UUID_B))
        doc = inventory(nics, serial="SN-4")
        answer = await s.call(lambda: agent.send_inventory(found.discovery_token or "", doc))
        name = answer["host"]["name"]
        assert name.startswith("sn-4-") and len(name) == len("sn-4-") + 6
        after = await s.client.get(BAREMETALHOSTS, namespace, "sn-4")
        assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]

        # A host that already describes a system (by its serial) is never duplicated, even
        # for MACs it does not list.
        known = await s.client.create(
            BAREMETALHOSTS,
            {"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
             "metadata": {"name": "known", "namespace": namespace},
             "spec": {"online": True, "bootMACAddress": "02:bb:00:00:00:02"}},
        )  # fmt: skip
        await s.client.patch(
            BAREMETALHOSTS, namespace, "known",
            {"status": {"operationalStatus": "OK", "errorMessage": "", "poweredOn": False,
                        "provisioning": {"state": "available", "ID": ""},
                        "hardware": {"systemVendor": {"serialNumber": "SN-KNOWN"}}}},
            subresource="status", content_type=MERGE_PATCH,
        )  # fmt: skip
        with anyio.fail_after(10):
            while s.api.discovery is None or "SN-KNOWN" not in s.api.discovery._by_serial:
                await anyio.sleep(0.02)
        other = macs(5, 0)
        refused = await s.refused(lambda: agent.lookup(other, serial_number="SN-KNOWN"))
        assert refused.status == 409
        # ... nor when the lookup did not say its serial but the inventory does.
        found = await s.call(lambda: agent.lookup(other))
        refused = await s.refused(
            lambda: agent.send_inventory(
                found.discovery_token or "", inventory(other, serial="SN-KNOWN")
            )
        )
        assert refused.status == 409
        names = sorted(h["metadata"]["name"] for h in await hosts(s))
        assert names == sorted(["sn-4", name, "known"])
        assert known["metadata"]["uid"]


async def test_concurrent_inventories_of_one_system_make_one_host(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    async with serving(kubeconfig, namespace, tmp_path) as s:
        # Ten lookups of the same machine (same UUID), all sending at once (MAX_TOKENS = 4);
        # and two lookups that share nothing but the serial their inventories carry.
        agents = [s.agent() for _ in range(12)]
        tokens = []
        system = str(uuid.uuid4())
        for n, agent in enumerate(agents[:10]):
            found = await s.call(lambda a=agent, n=n: a.lookup(macs(6, n), system_uuid=system))
            tokens.append(found.discovery_token or "")
        for n, agent in enumerate(agents[10:]):
            found = await s.call(lambda a=agent, n=n: a.lookup(macs(7, n)))
            tokens.append(found.discovery_token or "")

        def send(index: int) -> int:
            agent: AgentClient = agents[index]
            nics = macs(6, index) if index < 10 else macs(7, index - 10)
            try:
                answer = agent.send_inventory(
                    tokens[index], inventory(nics, serial=f"SN-{index // 10}")
                )
            except Exception as exc:
                return int(getattr(exc, "status", 0) or 0)
            return 201 if answer["created"] else 200

        def all_at_once() -> list[int]:
            with concurrent.futures.ThreadPoolExecutor(12) as pool:
                return list(pool.map(send, range(12)))

        statuses = await s.call(all_at_once)
        # The newest MAX_TOKENS tokens of the system are valid: one makes the host, the
        # others get it as made; the older ones were replaced (403: look up again).
        assert statuses[:6] == [403] * 6, statuses
        assert sorted(statuses[6:10]) == [200, 200, 200, 201], statuses
        assert sorted(statuses[10:]) == [201, 409], statuses
        assert sorted(h["metadata"]["name"] for h in await hosts(s)) == ["sn-0", "sn-1"]
        assert s.api.discovery is not None and s.api.discovery.created == 2


async def test_past_the_cap_lookups_get_429_with_retry_after(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    async with serving(kubeconfig, namespace, tmp_path, per_minute=2) as s:
        agent = s.agent()
        await s.call(lambda: agent.lookup(macs(8, 0)))
        await s.call(lambda: agent.lookup(macs(9, 0)))
        refused = await s.refused(lambda: agent.lookup(macs(10, 0)))
        assert refused.status == 429 and refused.retry_after is not None
        assert 1 <= refused.retry_after <= 60
        found = await s.call(lambda: agent.lookup(macs(8, 0)))  # admitted already: no cap
        assert found.discovery_token


async def test_an_inventory_too_large_for_a_host_is_a_clear_400(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """More interfaces than a lookup may list, or a hardware description the host's status
    annotation could not hold (the API server caps annotations at 256 KiB), is refused as bad
    input, not passed on to fail at the API server (which the agent would retry for ever)."""
    async with serving(kubeconfig, namespace, tmp_path) as s:
        agent = s.agent()
        nics = macs(11, 0)
        found = await s.call(lambda: agent.lookup(nics, serial_number="SN-11"))
        token = found.discovery_token or ""
        many = inventory(nics + [f"02:cc:00:00:{n >> 8:02x}:{n & 0xFF:02x}" for n in range(300)])
        big = inventory(nics, serial="SN-11")
        disk = big["disks"][0]
        big["disks"] = [{**disk, "name": f"/dev/sd{n}", "serial": "S" * 100} for n in range(2000)]
        for doc, text in [(many, "at most 256 are taken"), (big, "bytes of JSON; at most")]:
            refused = await s.refused(lambda d=doc: agent.send_inventory(token, d))  # type: ignore[misc]
            assert refused.status == 400 and text in refused.message, refused
        assert await hosts(s) == []
        # Within the limits, the same system is taken.
        answer = await s.call(lambda: agent.send_inventory(token, inventory(nics, serial="SN-11")))
        assert answer["created"] is True
