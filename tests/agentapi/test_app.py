"""The agent API over HTTPS, in-process, on a real API server: lookup and tokens, commands
from the host's state (long poll), results recorded once, config drive from Secrets, limits."""

from __future__ import annotations

import base64
import http.client
import logging
import ssl
from pathlib import Path

import anyio
import pytest

from agentapi.harness import Harness, serving
from metal3.agent.client import AgentClient
from metal3.agent.errors import AgentError
from metal3.agentapi.ratelimit import RateLimit
from metal3.agentapi.records import AgentRecords
from metal3.kube.client import MERGE_PATCH
from metal3.kube.resources import BAREMETALHOSTS

pytestmark = pytest.mark.anyio

MAC_A, MAC_B = "52:54:00:aa:00:01", "52:54:00:aa:00:02"
IMAGE = {"url": "http://192.0.2.10/os.raw", "checksum": "a" * 64, "checksumType": "sha256"}


async def lookup(h: Harness, mac: str) -> tuple[str, str | None]:
    found = await h.call(lambda: h.agent().lookup([mac]))
    return found.uid, found.token


async def test_lookup_gives_the_token_once_and_knows_no_stranger(
    kubeconfig: Path, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(kubeconfig, namespace, tmp_path) as h:
        created = await h.create_host("h1", MAC_A)
        await h.wait_seen("h1", created["metadata"]["resourceVersion"])
        found = await h.call(lambda: h.agent().lookup([MAC_A.upper().replace(":", "-")]))
        assert (found.namespace, found.name, found.uid) == (
            namespace,
            "h1",
            created["metadata"]["uid"],
        )
        assert found.token is not None and len(found.token) == 43
        again = await h.call(lambda: h.agent().lookup([MAC_A]))
        assert again.token is None  # kept hashed: never given twice
        unknown = await h.refused(lambda: h.agent().lookup(["52:54:00:ff:ff:ff"]))
        assert unknown.status == 404
        bad = await h.refused(lambda: h.agent().lookup(["not-a-mac"]))
        assert bad.status == 400
        empty = await h.refused(lambda: h.agent().lookup([]))
        assert empty.status == 400
        # A MAC found by inspection identifies the host too.
        nic = {"hardware": {"nics": [{"name": "eth1", "mac": "52:54:00:aa:00:99"}]}}
        patched = await h.set_status("h1", "inspecting", **nic)
        await h.wait_seen("h1", patched["metadata"]["resourceVersion"])
        assert (await h.call(lambda: h.agent().lookup(["52:54:00:aa:00:99"]))).name == "h1"
        # Two hosts with one MAC: refused, not a guess.
        created = await h.create_host("h2", "52:54:00:aa:00:99")
        await h.wait_seen("h2", created["metadata"]["resourceVersion"])
        assert (await h.refused(lambda: h.agent().lookup(["52:54:00:aa:00:99"]))).status == 409
    assert found.token not in caplog.text


async def test_a_token_is_good_for_its_own_host_only(
    kubeconfig: Path, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(kubeconfig, namespace, tmp_path) as h:
        a = await h.create_host("a", MAC_A)
        b = await h.create_host("b", MAC_B)
        await h.wait_seen("b", b["metadata"]["resourceVersion"])
        await h.wait_seen("a", a["metadata"]["resourceVersion"])
        uid_a, token_a = await lookup(h, MAC_A)
        uid_b, token_b = await lookup(h, MAC_B)
        assert token_a and token_b and token_a != token_b
        agent = h.agent()
        assert (await h.call(lambda: agent.command(uid_a, token_a)))["command"] == "inspect"

        def status_of(uid: str, header: str | None) -> int:
            headers = {"Authorization": header} if header is not None else {}
            context = ssl.create_default_context(cafile=str(h.ca_file))
            port = int(h.url.rsplit(":", 1)[1])
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
            try:
                connection.request("GET", f"/v1/hosts/{uid}/command", headers=headers)
                return connection.getresponse().status
            finally:
                connection.close()

        wrong = "A" * 43
        cases = {
            "missing": (uid_a, None, 401),
            "not bearer": (uid_a, f"Basic {token_a}", 401),
            "malformed": (uid_a, "Bearer xyz", 401),
            "wrong": (uid_a, f"Bearer {wrong}", 403),
            "b's token on a": (uid_a, f"Bearer {token_b}", 403),
            "a's token on b": (uid_b, f"Bearer {token_a}", 403),
            "unknown host": ("no-such-uid", f"Bearer {token_a}", 404),
            "right": (uid_b, f"Bearer {token_b}", 200),
        }
        for case, (uid, header, expected) in cases.items():
            got = await anyio.to_thread.run_sync(status_of, uid, header)
            assert got == expected, case
        refused = await h.refused(
            lambda: agent.post_result(uid_b, token_a, "inspect-" + "0" * 24, "succeeded")
        )
        assert refused.status == 403
    assert "refused GET /v1/hosts/" in caplog.text  # refusals are logged...
    for token in (token_a, token_b, wrong):
        assert token not in caplog.text  # ...without the token


async def test_inspection_result_is_recorded_once_and_the_operator_is_told(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    async with serving(kubeconfig, namespace, tmp_path) as h:
        created = await h.create_host("h1", MAC_A)
        patched = await h.set_status("h1", "inspecting")
        await h.wait_seen("h1", patched["metadata"]["resourceVersion"])
        uid, token = await lookup(h, MAC_A)
        assert token is not None
        agent = h.agent()
        command = await h.call(lambda: agent.command(uid, token))
        assert command["command"] == "inspect"
        assert (await h.call(lambda: agent.command(uid, token)))["id"] == command["id"]
        inventory = {"cpu": {"count": 2}, "hostname": "h1"}
        first = await h.call(
            lambda: agent.post_result(uid, token, command["id"], "succeeded", inventory)
        )
        repeat = await h.call(
            lambda: agent.post_result(uid, token, command["id"], "succeeded", {"other": 1})
        )
        assert (first, repeat) == (True, False)
        assert h.results == [(namespace, "h1")]  # on_result: once, for the recorded one
        after = await h.call(lambda: agent.command(uid, token))
        assert after["command"] == "wait"
        record = await AgentRecords(h.client).get(created)
        assert record.results[command["id"]].result == inventory
        assert record.results[command["id"]].command == "inspect"
        # A result needs a real command id and a status.
        for bad_id in ("wait-" + "0" * 24, "inspect-xyz", "nonsense"):
            error = await h.refused(lambda i=bad_id: agent.post_result(uid, token, i, "succeeded"))
            assert error.status == 400
        error = await h.refused(lambda: agent.post_result(uid, token, "clean-" + "1" * 24, "maybe"))
        assert error.status == 400
        await h.call(lambda: agent.progress(uid, token, command["id"], "write", done_bytes=10))
        assert h.api.progress[uid]["bytes"] == 10


async def test_the_long_poll_ends_when_the_host_changes(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    async with serving(kubeconfig, namespace, tmp_path) as h:
        await h.create_host("h1", MAC_A, image=IMAGE)
        patched = await h.set_status("h1", "available")
        await h.wait_seen("h1", patched["metadata"]["resourceVersion"])
        uid, token = await lookup(h, MAC_A)
        assert token is not None
        agent = h.agent()
        assert (await h.call(lambda: agent.command(uid, token)))["command"] == "wait"
        answers: list[dict[str, object]] = []

        async def poll() -> None:
            answers.append(await h.call(lambda: agent.command(uid, token, wait=60)))

        # The answer is wait for a full minute unless the host's change wakes the poll; the
        # test gives up long before that.
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.5)
                assert answers == []  # still waiting
                await h.set_status("h1", "provisioning")
        assert answers[0]["command"] == "deploy"


async def test_deploy_carries_the_config_drive_from_the_hosts_namespace_only(
    kubeconfig: Path, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user_data = b"#cloud-config\npassword: s3cr3t-user-data\n\xff\x00binary"
    async with serving(kubeconfig, namespace, tmp_path) as h:
        await h.create_secret("ud", userData=user_data)
        await h.create_secret("nd", networkData=b"links:\n- id: eth0\n  type: phy\n")
        await h.create_secret("md", metaData=b'{"public_keys": {"0": "ssh-ed25519 AAAA"}}')
        await h.create_host(
            "h1",
            MAC_A,
            image=IMAGE,
            rootDeviceHints={"deviceName": "/dev/sdb"},
            userData={"name": "ud"},
            networkData={"name": "nd", "namespace": namespace},
            metaData={"name": "md"},
        )
        patched = await h.set_status("h1", "provisioning")
        await h.wait_seen("h1", patched["metadata"]["resourceVersion"])
        uid, token = await lookup(h, MAC_A)
        assert token is not None
        agent = h.agent()
        command = await h.call(lambda: agent.command(uid, token))
        assert command["command"] == "deploy"
        args = command["args"]
        assert args["image"] == {**IMAGE, "format": None}
        assert args["rootDeviceHints"] == {"deviceName": "/dev/sdb"}
        assert args["host"] == {"uuid": uid, "namespace": namespace, "name": "h1"}
        drive = args["configDrive"]
        assert base64.b64decode(drive["userData"]) == user_data
        assert drive["networkData"] == {"links": [{"id": "eth0", "type": "phy"}]}
        assert drive["metaData"] == {"public_keys": {"0": "ssh-ed25519 AAAA"}}

        # A reference to another namespace is refused with a reason; so is a missing Secret.
        changed = await h.client.patch(
            BAREMETALHOSTS,
            namespace,
            "h1",
            {"spec": {"userData": {"name": "ud", "namespace": "other"}}},
        )
        await h.wait_seen("h1", changed["metadata"]["resourceVersion"])
        refused = await h.call(lambda: agent.command(uid, token))
        assert refused["command"] == "wait"
        assert (
            '"other/ud": cross-namespace Secret references are not allowed'
            in (refused["args"]["reason"])
        )
        changed = await h.client.patch(
            BAREMETALHOSTS,
            namespace,
            "h1",
            {"spec": {"userData": {"name": "nope", "namespace": None}}},
        )
        await h.wait_seen("h1", changed["metadata"]["resourceVersion"])
        missing = await h.call(lambda: agent.command(uid, token))
        assert missing["command"] == "wait"
        assert '"nope": Secret not found' in missing["args"]["reason"]

        # The reconciler's rules (metal3.configdata) apply here too: a Secret's `value` key
        # stands in for the field's own, and networkData falls back to
        # preprovisioningNetworkDataName.
        await h.create_secret("ud-value", value=b"#cloud-config\nfrom: value-key\n")
        await h.create_secret("pre-nd", networkData=b'{"links": [], "networks": []}')
        changed = await h.client.patch(
            BAREMETALHOSTS,
            namespace,
            "h1",
            {
                "spec": {
                    "userData": {"name": "ud-value", "namespace": None},
                    "networkData": None,
                    "preprovisioningNetworkDataName": "pre-nd",
                }
            },
        )
        await h.wait_seen("h1", changed["metadata"]["resourceVersion"])
        fallback = await h.call(lambda: agent.command(uid, token))
        assert fallback["command"] == "deploy"
        drive = fallback["args"]["configDrive"]
        assert base64.b64decode(drive["userData"]) == b"#cloud-config\nfrom: value-key\n"
        assert drive["networkData"] == {"links": [], "networks": []}
    assert b"s3cr3t-user-data" not in caplog.text.encode()
    assert token not in caplog.text


async def test_acknowledging_a_terminal_command_rotates_the_token(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    async with serving(kubeconfig, namespace, tmp_path) as h:
        await h.create_host("h1", MAC_A, image=IMAGE, state="provisioning")
        uid, token = await lookup(h, MAC_A)  # the deploying agent's token
        assert token is not None
        patched = await h.set_status("h1", "provisioned")
        await h.wait_seen("h1", patched["metadata"]["resourceVersion"])
        agent = h.agent()
        command = await h.call(lambda: agent.command(uid, token))
        assert command["command"] == "reboot_to_disk"
        assert await h.call(lambda: agent.post_result(uid, token, command["id"], "succeeded"))
        gone = await h.refused(lambda: agent.command(uid, token))
        assert gone.status == 401  # the host holds no token any more
        # What runs on a provisioned host now is its own OS: a lookup from it gets no token.
        refused = await h.refused(lambda: agent.lookup([MAC_A]))
        assert refused.status == 403 and "'provisioned'" in refused.message


async def test_an_ended_session_is_told_so_even_after_the_next_agent_boot(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """The provisioner ends the agent's session before it powers the host off (`agent_gone`).
    An agent still up after that (its BMC said off before the power was cut) is refused with
    410 on every call, also once the next boot is expected, so it can never take that boot's
    token and work; the next boot's agent gets a new token as usual."""
    async with serving(kubeconfig, namespace, tmp_path) as h:
        h.api.agent_boot_required = True
        host = await h.create_host("h1", MAC_A, state="inspecting")
        await h.api.records.expect_agent(host)
        uid, old = await lookup(h, MAC_A)
        assert old is not None
        agent = h.agent()
        assert (await h.call(lambda: agent.command(uid, old)))["command"] == "inspect"
        await h.api.records.agent_gone(host)  # the power off for the end of inspection
        ended = await h.refused(lambda: agent.command(uid, old))
        assert ended.status == 410 and "session is over" in ended.message
        patched = await h.set_status("h1", "preparing")
        await h.wait_seen("h1", patched["metadata"]["resourceVersion"])
        await h.api.records.expect_agent(host)  # the boot for cleaning
        ended = await h.refused(lambda: agent.command(uid, old))
        assert ended.status == 410
        refused = await h.refused(lambda: agent.post_result(uid, old, "clean-" + "0" * 24, "ok"))
        assert refused.status == 410
        _, fresh = await lookup(h, MAC_A)  # the new boot's agent
        assert fresh is not None and fresh != old
        assert (await h.call(lambda: agent.command(uid, fresh)))["command"] == "clean"
        assert (await h.refused(lambda: agent.command(uid, old))).status == 410
        record = await h.api.records.get(host)
        assert len(record.ended_tokens) == 1 and record.token_from_booted_agent


async def test_no_token_where_no_agent_runs_or_before_the_agent_boot(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """Lookups are refused in states where no agent runs (a tenant's OS on a provisioned host
    must never act as its agent); with `agent_boot_required` (the direct provisioner), also
    until the provisioner has booted the host into the agent."""
    async with serving(kubeconfig, namespace, tmp_path) as h:
        states = ("provisioned", "externally provisioned", "registering", None)
        for index, state in enumerate(states):
            name = f"h-{(state or 'new').replace(' ', '-')}"
            mac = f"52:54:00:00:01:{index:02x}"
            await h.create_host(name, mac, state=state)
            if state is None:
                created = await h.client.get(BAREMETALHOSTS, namespace, name)
                await h.wait_seen(name, created["metadata"]["resourceVersion"])
            refused = await h.refused(lambda mac=mac: h.agent().lookup([mac]))
            assert refused.status == 403, state
            record = await h.api.records.get(await h.client.get(BAREMETALHOSTS, namespace, name))
            assert not record.token_hash, state

        h.api.agent_boot_required = True
        host = await h.create_host("booted", MAC_B, state="deprovisioning")
        refused = await h.refused(lambda: h.agent().lookup([MAC_B]))
        assert refused.status == 403 and "not booted into the agent" in refused.message
        await h.api.records.expect_agent(host)  # the provisioner boots the agent
        _, token = await lookup(h, MAC_B)
        assert token is not None
        record = await h.api.records.get(host)
        assert record.token_from_booted_agent
        await h.api.records.agent_gone(host)  # up from its disk: no token, none expected
        refused = await h.refused(lambda: h.agent().lookup([MAC_B]))
        assert refused.status == 403


async def test_rate_limit_body_limit_and_openapi(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    async with serving(
        kubeconfig, namespace, tmp_path, rate_limit=RateLimit(rate=0.5, burst=3)
    ) as h:
        agent = h.agent()
        document = await h.call(lambda: agent.request("GET", "/v1/openapi.json"))
        assert document["openapi"].startswith("3.")
        assert set(document["paths"]) >= {
            "/v1/lookup",
            "/v1/hosts/{uid}/command",
            "/v1/hosts/{uid}/results/{command_id}",
            "/v1/hosts/{uid}/progress",
        }
        for _ in range(2):
            await h.call(lambda: agent.request("GET", "/v1/openapi.json"))
        limited = await h.refused(lambda: agent.request("GET", "/v1/openapi.json"))
        assert limited.status == 429
        assert limited.retry_after is not None and limited.retry_after >= 1

    async with serving(kubeconfig, namespace + "b", tmp_path) as h:
        big = {"mac_addresses": [MAC_A], "padding": "x" * (4 * 1024 * 1024)}
        too_big = await h.refused(lambda: h.agent().request("POST", "/v1/lookup", big))
        assert too_big.status == 413
        # Just under the limit is read (and then refused for what it says, not its size).
        fits = {"mac_addresses": [MAC_A], "padding": "x" * (4 * 1024 * 1024 - 100)}
        assert (
            await h.refused(lambda: h.agent().request("POST", "/v1/lookup", fits))
        ).status == 404
        wrong_method = await h.refused(lambda: h.agent().request("GET", "/v1/lookup"))
        assert wrong_method.status == 405
        not_json = await h.refused(lambda: h.agent().request("POST", "/v1/nowhere"))
        assert not_json.status == 404


async def test_an_untrusted_server_is_refused(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    from metal3.agentapi.server import ensure_tls

    other_ca = ensure_tls(tmp_path / "other", "127.0.0.1").ca_cert
    async with serving(kubeconfig, namespace, tmp_path) as h:
        error = await h.refused(lambda: h.agent(other_ca).lookup([MAC_A]))
        assert error.status is None and "not trusted" in error.message
    with pytest.raises(AgentError, match="https"):
        AgentClient("http://127.0.0.1:1", ca_file=other_ca)


async def test_a_lookup_saying_it_has_no_token_marks_the_booted_agents_token_lost(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """The answer carrying a token can be lost (an operator killed mid-lookup): the agent then
    looks up without one while the operator holds it. It says so (`has_token: false`), the
    record notes it for the provisioner (which boots the agent again); no token is given."""
    async with serving(kubeconfig, namespace, tmp_path) as h:
        host = await h.create_host("h1", MAC_A)
        records = AgentRecords(h.client)
        await records.expect_agent(host)  # the provisioner boots the agent
        _, token = await lookup(h, MAC_A)  # ... whose answer is lost
        assert token is not None
        kept = await h.call(lambda: h.agent().lookup([MAC_A], has_token=True))
        assert kept.token is None and not (await records.get(host)).token_lost  # a restart
        again = await h.call(lambda: h.agent().lookup([MAC_A], has_token=False))
        assert again.token is None  # never given twice
        record = await records.get(host)
        assert record.token_lost and record.token_from_booted_agent
        noted = record.token_lost_at
        await h.call(lambda: h.agent().lookup([MAC_A], has_token=False))
        assert (await records.get(host)).token_lost_at == noted  # noted once
        await records.expect_agent(host)  # booted again: a new token, nothing lost
        record = await records.get(host)
        assert not record.token_lost and not record.token_lost_at
        _, fresh = await lookup(h, MAC_A)
        assert fresh is not None and fresh != token
        # A token no agent boot asked for (a tenant's OS looking up) is never "lost".
        await records.agent_gone(host)
        await h.call(lambda: h.agent().lookup([MAC_A]))
        await h.call(lambda: h.agent().lookup([MAC_A], has_token=False))
        assert not (await records.get(host)).token_lost
        bad = await h.refused(lambda: h.agent().request("POST", "/v1/lookup", {
            "mac_addresses": [MAC_A], "has_token": "no"}))  # fmt: skip
        assert bad.status == 400


async def test_a_terminal_command_is_decided_on_the_host_as_it_is_now(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """An agent booted to deploy asks while the API's cache still has the host `available`
    and offline, whose command is a power off. The API reads the host before it says so: the
    agent gets the deploy, its session goes on (a power off would have ended it, and an agent
    that powers the machine off itself would have undone its boot)."""
    async with serving(kubeconfig, namespace, tmp_path) as h:
        host = await h.create_host("h1", MAC_A, state="available", online=False)
        uid, token = await lookup(h, MAC_A)
        assert token is not None
        stale = h.api.hosts.informer.store.get(namespace, "h1")
        assert stale is not None
        await h.client.patch(
            BAREMETALHOSTS, namespace, "h1", {"spec": {"online": True, "image": IMAGE}},
            content_type=MERGE_PATCH,
        )  # fmt: skip
        patched = await h.set_status("h1", "provisioning")
        await h.wait_seen("h1", patched["metadata"]["resourceVersion"])
        h.api.hosts.informer.store._items[(namespace, "h1")] = stale  # the cache lags
        agent = h.agent()
        command = await h.call(lambda: agent.command(uid, token))
        assert command["command"] == "deploy"
        record = await h.api.records.get(host)
        assert record.token_hash  # the session goes on
        # With the cache up to date, an offline available host's agent is told to power off.
        offline = await h.client.patch(
            BAREMETALHOSTS, namespace, "h1", {"spec": {"online": False}}, content_type=MERGE_PATCH
        )
        await h.wait_seen("h1", offline["metadata"]["resourceVersion"])
        patched = await h.set_status("h1", "available")
        await h.wait_seen("h1", patched["metadata"]["resourceVersion"])
        assert (await h.call(lambda: agent.command(uid, token)))["command"] == "power_off"
