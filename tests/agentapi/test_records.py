"""The per-host agent record, a Secret owned by the host, against a real API server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from agentapi.harness import host_manifest
from metal3.agentapi.records import (
    MAX_RECORD_BYTES,
    MAX_RESULTS,
    RECORD_TYPE,
    AgentRecord,
    AgentRecords,
    RecordedResult,
    ResultTooLargeError,
    now_rfc3339,
    record_name,
)
from metal3.agentapi.tokens import new_token
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, NAMESPACES, SECRETS

pytestmark = pytest.mark.anyio


def result(command: str = "deploy", **body: Any) -> RecordedResult:
    return RecordedResult(command, "succeeded", body or {"ok": True}, None, now_rfc3339())


async def setup(client: KubeClient, namespace: str, name: str = "h1") -> dict[str, Any]:
    await client.create(
        NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    )
    return await client.create(BAREMETALHOSTS, host_manifest(name, namespace, "52:54:00:00:00:01"))


async def test_a_record_is_a_secret_owned_by_the_host_and_goes_with_it(
    kubeconfig: Path, namespace: str
) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        host = await setup(client, namespace)
        records = AgentRecords(client)
        token, digest = new_token()
        await records.update(host, lambda r: r.issue_token(digest))
        recorded = await records.update(
            host, lambda r: r.add_result("deploy-" + "a" * 24, result())
        )
        assert recorded is True
        secret = await client.get(SECRETS, namespace, "metal3-agent-h1")
        assert secret["type"] == RECORD_TYPE
        (owner,) = secret["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "BareMetalHost",
            "h1",
            host["metadata"]["uid"],
        )
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        assert data["token-sha256"].decode() == digest
        assert token.encode() not in b"".join(data.values())  # only the hash is kept
        stored = orjson.loads(data["result.deploy-" + "a" * 24])
        assert (stored["command"], stored["status"], stored["result"]) == (
            "deploy",
            "succeeded",
            {"ok": True},
        )

        # Read back as an operator restart would: everything is there.
        again = await AgentRecords(client).get(host)
        assert again.token_hash == digest
        assert list(again.results) == ["deploy-" + "a" * 24]

        await client.delete(BAREMETALHOSTS, namespace, "h1")
        with anyio.fail_after(15):
            while True:
                try:
                    await client.get(SECRETS, namespace, "metal3-agent-h1")
                except ApiError as exc:
                    assert exc.not_found
                    break
                await anyio.sleep(0.1)


async def test_a_result_is_recorded_once(kubeconfig: Path, namespace: str) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        host = await setup(client, namespace)
        records = AgentRecords(client)
        first = result(disk="/dev/sda")
        assert await records.update(host, lambda r: r.add_result("clean-" + "b" * 24, first))
        repeat = result(disk="/dev/sdb")
        assert not await records.update(host, lambda r: r.add_result("clean-" + "b" * 24, repeat))
        stored = (await records.get(host)).results["clean-" + "b" * 24]
        assert stored.result == {"disk": "/dev/sda"}


async def test_concurrent_writers_lose_nothing(kubeconfig: Path, namespace: str) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        host = await setup(client, namespace)
        records = AgentRecords(client)
        ids = [f"inspect-{i:024x}" for i in range(12)]
        outcomes: list[bool] = []

        async def add(command_id: str) -> None:
            outcomes.append(
                await records.update(host, lambda r: r.add_result(command_id, result("inspect")))
            )

        async with anyio.create_task_group() as tg:
            for command_id in ids:
                tg.start_soon(add, command_id)
        assert outcomes == [True] * len(ids)
        assert sorted((await records.get(host)).results) == sorted(ids)


async def test_a_host_recreated_under_the_same_name_starts_afresh(
    kubeconfig: Path, namespace: str
) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        host = await setup(client, namespace)
        records = AgentRecords(client)
        _, digest = new_token()
        await records.update(host, lambda r: r.issue_token(digest))
        other_host = {**host, "metadata": {**host["metadata"], "uid": "another-uid"}}
        fresh = await records.get(other_host)
        assert (fresh.token_hash, fresh.results, fresh.exists) == ("", {}, True)
        _, other_digest = new_token()
        await records.update(other_host, lambda r: r.issue_token(other_digest))
        assert (await records.get(other_host)).token_hash == other_digest
        assert (await records.get(host)).token_hash == ""  # the old one's token is gone with it


async def test_rotate_token(kubeconfig: Path, namespace: str) -> None:
    async with await KubeClient.connect(str(kubeconfig)) as client:
        host = await setup(client, namespace)
        records = AgentRecords(client)
        assert not await records.rotate_token(host)
        _, digest = new_token()
        await records.update(host, lambda r: r.issue_token(digest))
        assert await records.rotate_token(host)
        assert (await records.get(host)).token_hash == ""


def test_old_results_make_room_and_a_huge_one_is_refused() -> None:
    record = AgentRecord(host_uid="u")
    for i in range(MAX_RESULTS + 5):
        assert record.add_result(f"inspect-{i:024x}", result("inspect"))
    assert len(record.results) == MAX_RESULTS
    assert f"inspect-{0:024x}" not in record.results  # the oldest went first
    assert f"inspect-{MAX_RESULTS + 4:024x}" in record.results
    big = result("inspect", blob="x" * (MAX_RECORD_BYTES // 3))
    for i in range(3):
        assert record.add_result(f"inspect-{1000 + i:024x}", big)
    assert f"inspect-{1002:024x}" in record.results
    assert sum(len(orjson.dumps(r.to_json())) for r in record.results.values()) <= MAX_RECORD_BYTES
    with pytest.raises(ResultTooLargeError):
        record.add_result("deploy-" + "c" * 24, result(blob="x" * MAX_RECORD_BYTES))
    assert "deploy-" + "c" * 24 not in record.results


def test_long_host_names_get_distinct_short_record_names() -> None:
    long_a, long_b = "a" * 250 + "x", "a" * 250 + "y"
    assert record_name("h1") == "metal3-agent-h1"
    assert len(record_name(long_a)) <= 253
    assert record_name(long_a) != record_name(long_b)


class _CountingReads:
    """The client's reads of Secrets, counted (a wrapper: every other call goes through)."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self.reads = 0

    async def get(self, resource: Any, *args: Any, **kwargs: Any) -> Any:
        if resource is SECRETS:
            self.reads += 1
        return await self._client.get(resource, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


async def test_a_change_from_a_record_read_before_is_safe(kubeconfig: Path, namespace: str) -> None:
    """`change` with the caller's record: a write from it needs no second read and the
    record comes back with the Secret's new version (a next change from it needs none
    either); a write from a record someone changed since conflicts and is made again on a
    fresh read, losing nothing; a change that is none on an old record is confirmed on a
    fresh one (someone may have written what it undoes)."""
    async with await KubeClient.connect(str(kubeconfig)) as client:
        host = await setup(client, namespace)
        counting = _CountingReads(client)
        records = AgentRecords(counting)  # type: ignore[arg-type]
        _, digest = new_token()
        await records.update(host, lambda r: r.issue_token(digest))

        read = await records.get(host)
        counting.reads = 0
        _, after = await records.change(host, AgentRecord.expect_agent, current=read)
        _, after = await records.change(host, AgentRecord.agent_gone, current=after)
        assert counting.reads == 0
        stored = await AgentRecords(client).get(host)
        assert stored.resource_version == after.resource_version
        assert (stored.token_hash, stored.agent_boot_at) == ("", "")

        # Someone else writes after our read: our write conflicts and is made again.
        old = await records.get(host)
        _, other = new_token()
        await AgentRecords(client).update(host, lambda r: r.issue_token(other))
        counting.reads = 0
        added, _ = await records.change(
            host, lambda r: r.add_result("deploy-" + "b" * 24, result()), current=old
        )
        assert added is True and counting.reads == 1
        stored = await AgentRecords(client).get(host)
        assert stored.token_hash == other and list(stored.results) == ["deploy-" + "b" * 24]

        # A token issued after our read: agent_gone is a no-op on our old record (no token
        # there), not on the record as it is; the token must go.
        await AgentRecords(client).update(host, lambda r: r.agent_gone())
        old = await records.get(host)
        assert old.token_hash == ""
        _, third = new_token()
        await AgentRecords(client).update(host, lambda r: r.issue_token(third))
        _, now = await records.change(host, AgentRecord.agent_gone, current=old)
        assert now.token_hash == ""
        assert (await AgentRecords(client).get(host)).token_hash == ""
