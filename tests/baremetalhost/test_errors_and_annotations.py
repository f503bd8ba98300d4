"""Errors and their recovery, and the annotations that steer a host."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import anyio
import orjson
import pytest

from baremetalhost.kit import FAST, IMAGE, cluster, condition, host, running_operator, secret, state
from metal3.kube.resources import BAREMETALHOSTS, SECRETS

pytestmark = pytest.mark.anyio


async def test_missing_secret_is_a_registration_error_until_it_appears(
    kubeconfig: Path, namespace: str
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("m1", namespace), with_secret=False)
        obj = await c.wait_for(
            "m1", lambda o: (o or {}).get("status", {}).get("errorType") == "registration error"
        )
        assert obj is not None
        assert obj["status"]["operationalStatus"] == "error"
        assert (
            "m1-bmc" in obj["status"]["errorMessage"]
            and "not found" in obj["status"]["errorMessage"]
        )
        assert obj["status"]["errorCount"] >= 1
        assert condition(obj, "Healthy") == "False"
        await c.client.create(SECRETS, secret("m1-bmc", namespace))
        obj = await c.wait_state("m1", "available")
        assert "errorType" not in obj["status"]
        assert obj["status"]["errorCount"] == 0


@pytest.mark.parametrize("empty", ["username", "password"])
async def test_empty_credentials_are_a_registration_error(
    kubeconfig: Path, namespace: str, empty: str
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        creds = secret("e1-bmc", namespace)
        creds["data"][empty] = base64.b64encode(b"   ").decode()
        await c.client.create(SECRETS, creds)
        await c.apply_host(host("e1", namespace), with_secret=False)
        obj = await c.wait_for(
            "e1", lambda o: (o or {}).get("status", {}).get("errorType") == "registration error"
        )
        assert obj is not None and f"has no {empty}" in obj["status"]["errorMessage"]
        assert "pw" not in orjson.dumps(obj["status"]).decode()  # no secret in the status
        creds = secret("e1-bmc", namespace)
        current = await c.client.get(SECRETS, namespace, "e1-bmc")
        creds["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await c.client.replace(SECRETS, creds)
        await c.wait_state("e1", "available")


async def test_inspection_failure_is_retried_with_backoff(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        annotations = {"fixture.metal3.io/inspect": "fail:2"}
        await c.apply_host(host("i1", namespace, annotations=annotations))
        obj = await c.wait_for(
            "i1", lambda o: (o or {}).get("status", {}).get("errorType") == "inspection error"
        )
        assert obj is not None and state(obj) == "inspecting"
        obj = await c.wait_state("i1", "available")
        assert obj["status"]["errorCount"] == 0
        assert c.world.hosts[c.uid(obj)].attempts["inspect"] == 3


async def test_provisioning_failures_stop_at_the_retry_limit(
    kubeconfig: Path, namespace: str
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        annotations = {"fixture.metal3.io/provision": "fail"}
        await c.apply_host(host("f1", namespace, image=IMAGE, annotations=annotations))
        obj = await c.wait_for(
            "f1",
            lambda o: (
                (o or {}).get("status", {}).get("provisioningFailCount", 0)
                >= FAST.max_provisioning_retries
                and state(o) == "available"
            ),
            timeout=30,
            what="retries exhausted",
        )
        assert obj is not None
        attempts = c.world.hosts[c.uid(obj)].attempts["provision"]
        await anyio.sleep(1.0)  # long enough for more retries, were any to happen
        obj = await c.get("f1")
        assert obj is not None
        assert c.world.hosts[c.uid(obj)].attempts["provision"] == attempts
        assert attempts == FAST.max_provisioning_retries
        assert obj["status"]["errorType"] == "provisioning error"
        assert obj["status"]["lastAttemptedImage"]["url"] == IMAGE["url"]
        # A new image is a new chance.
        await c.patch(
            "f1",
            {
                "metadata": {"annotations": {"fixture.metal3.io/provision": "ok"}},
                "spec": {"image": {**IMAGE, "url": "http://192.0.2.1/fixed.img"}},
            },
        )
        obj = await c.wait_state("f1", "provisioned", timeout=30)
        assert obj["status"]["provisioningFailCount"] == 0


async def test_paused_host_is_not_touched(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        paused = {"baremetalhost.metal3.io/paused": ""}
        await c.apply_host(host("z1", namespace, annotations=paused))
        await anyio.sleep(1.0)
        obj = await c.get("z1")
        assert obj is not None and "status" not in obj
        assert not obj["metadata"].get("finalizers")
        await c.patch("z1", {"metadata": {"annotations": {"baremetalhost.metal3.io/paused": None}}})
        await c.wait_state("z1", "available")


async def test_status_annotation_is_restored(kubeconfig: Path, namespace: str) -> None:
    saved = {
        "operationalStatus": "OK",
        "errorMessage": "",
        "errorCount": 0,
        "provisioningFailCount": 0,
        "poweredOn": True,
        "provisioning": {"state": "externally provisioned", "ID": "moved-123"},
        "hardware": {"hostname": "moved"},
    }
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        annotations = {"baremetalhost.metal3.io/status": orjson.dumps(saved).decode()}
        await c.apply_host(
            host("s1", namespace, annotations=annotations, externallyProvisioned=True)
        )
        obj = await c.wait_for(
            "s1",
            lambda o: (
                "baremetalhost.metal3.io/status" not in (o or {})["metadata"].get("annotations", {})
                and state(o) == "externally provisioned"
            ),
        )
        assert obj is not None
        assert obj["status"]["provisioning"]["ID"] == "moved-123"
        assert obj["status"]["hardware"] == {"hostname": "moved"}
        assert c.world.count(c.uid(obj), "inspect") == 0


async def test_detach_and_reattach(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("t1", namespace, image=IMAGE))
        await c.wait_state("t1", "provisioned")
        delay = orjson.dumps({"deleteAction": "delay"}).decode()
        await c.patch(
            "t1", {"metadata": {"annotations": {"baremetalhost.metal3.io/detached": delay}}}
        )
        obj = await c.wait_for(
            "t1", lambda o: (o or {})["status"]["operationalStatus"] == "detached"
        )
        assert obj is not None and c.world.hosts[c.uid(obj)].detached
        # deleteAction delay: deletion waits while the host is detached.
        await c.delete("t1")
        await anyio.sleep(0.8)
        obj = await c.get("t1")
        assert obj is not None and state(obj) == "provisioned"
        assert c.world.count(c.uid(obj), "deprovision") == 0
        # Re-attached, the deletion proceeds through deprovisioning.
        await c.patch(
            "t1", {"metadata": {"annotations": {"baremetalhost.metal3.io/detached": None}}}
        )
        await c.wait_gone("t1")
        assert c.world.count(c.uid(obj), "deprovision") == 1


async def test_detached_host_deleted_without_deprovisioning(
    kubeconfig: Path, namespace: str
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("t2", namespace, image=IMAGE))
        obj = await c.wait_state("t2", "provisioned")
        await c.patch("t2", {"metadata": {"annotations": {"baremetalhost.metal3.io/detached": ""}}})
        await c.wait_for("t2", lambda o: (o or {})["status"]["operationalStatus"] == "detached")
        await c.delete("t2")
        await c.wait_gone("t2")
        assert c.world.count(c.uid(obj), "deprovision") == 0


async def test_plain_reboot_annotation_power_cycles_once(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("b1", namespace, image=IMAGE))
        obj = await c.wait_state("b1", "provisioned")
        uid = c.uid(obj)
        offs = c.world.count(uid, "power_off")
        await c.patch("b1", {"metadata": {"annotations": {"reboot.metal3.io": '{"mode":"hard"}'}}})
        obj = await c.wait_for(
            "b1",
            lambda o: (
                "reboot.metal3.io" not in (o or {})["metadata"].get("annotations", {})
                and (o or {})["status"]["poweredOn"] is True
                and c.world.count(uid, "power_off") == offs + 1
            ),
            what="reboot done",
        )
        assert c.world.hosts[uid].powered_on


async def test_suffixed_reboot_annotation_holds_power_off(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("b2", namespace, image=IMAGE))
        await c.wait_state("b2", "provisioned")
        key = "reboot.metal3.io/remediation"
        await c.patch("b2", {"metadata": {"annotations": {key: ""}}})
        await c.wait_for("b2", lambda o: (o or {})["status"]["poweredOn"] is False)
        await anyio.sleep(0.8)
        obj = await c.get("b2")
        assert obj is not None and obj["status"]["poweredOn"] is False
        assert key in obj["metadata"]["annotations"]  # kept: its owner removes it
        await c.patch("b2", {"metadata": {"annotations": {key: None}}})
        await c.wait_for("b2", lambda o: (o or {})["status"]["poweredOn"] is True)


async def test_capacity_gate_delays_hosts(kubeconfig: Path, namespace: str) -> None:
    settings = replace(FAST, provisioning_limit=1, in_progress_poll=0.02)
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace, settings=settings),
    ):
        slow = {"fixture.metal3.io/inspect": "steps:40"}
        for name in ("g1", "g2"):
            await c.apply_host(host(name, namespace, annotations=slow))
        # One inspects, the other waits with operationalStatus delayed.
        delayed = None
        with anyio.fail_after(20):
            while delayed is None:
                for name in ("g1", "g2"):
                    obj = await c.get(name)
                    if obj and obj.get("status", {}).get("operationalStatus") == "delayed":
                        delayed = obj
                await anyio.sleep(0.05)
        assert state(delayed) == "registering"  # held before inspecting
        other = await c.get("g2" if delayed["metadata"]["name"] == "g1" else "g1")
        assert other is not None and state(other) == "inspecting"
        for name in ("g1", "g2"):
            await c.wait_state(name, "available", timeout=30)


async def test_conditions_follow_kubectl_wait_semantics(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("k1", namespace, image=IMAGE))
        obj = await c.wait_for("k1", lambda o: condition(o or {}, "Ready") == "True")
        assert obj is not None and state(obj) == "provisioned"
        by_type = {x["type"]: x for x in obj["status"]["conditions"]}
        assert set(by_type) == {
            "Manageable", "AvailableForProvisioning", "Provisioned", "Ready", "Progressing",
            "Healthy",
        }  # fmt: skip
        assert by_type["Provisioned"]["status"] == "True"
        assert by_type["Progressing"]["status"] == "False"
        assert by_type["Ready"]["observedGeneration"] == obj["metadata"]["generation"]
        raw = await c.client.list(BAREMETALHOSTS, namespace)
        assert len(raw[0]) == 1


@pytest.mark.parametrize("legacy", ["ready", "match profile"])
async def test_legacy_states_are_understood(kubeconfig: Path, namespace: str, legacy: str) -> None:
    """`ready` is handled as `available` (and keeps its name, as upstream); `match profile`
    moves on to preparing. Either way the host then provisions normally."""
    saved = {
        "operationalStatus": "OK",
        "errorMessage": "",
        "errorCount": 0,
        "provisioningFailCount": 0,
        "poweredOn": False,
        "provisioning": {"state": legacy, "ID": "old-node"},
    }
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        annotations = {"baremetalhost.metal3.io/status": orjson.dumps(saved).decode()}
        await c.apply_host(host("l1", namespace, annotations=annotations))
        seen: list[str] = []
        async with anyio.create_task_group() as tg:
            await tg.start(c.record_states, "l1", seen)
            await c.wait_for(
                "l1",
                lambda o: condition(o or {}, "AvailableForProvisioning") == "True",
                what="available for provisioning",
            )
            await c.patch("l1", {"spec": {"image": IMAGE}})
            await c.wait_state("l1", "provisioned")
            await c.delete("l1")
        assert legacy in seen
        assert ("preparing" in seen) == (legacy == "match profile")
        assert "inspecting" not in seen and "registering" not in seen


async def test_power_drift_is_noticed_by_polling(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("w1", namespace, image=IMAGE))
        obj = await c.wait_for("w1", lambda o: condition(o or {}, "Ready") == "True")
        assert obj is not None
        uid = c.uid(obj)
        ons = c.world.count(uid, "power_on")
        c.world.hosts[uid].powered_on = False  # someone pressed the power button
        await c.wait_for(
            "w1",
            lambda o: (
                c.world.count(uid, "power_on") == ons + 1
                and (o or {})["status"]["poweredOn"] is True
            ),
            what="power restored after the poll noticed it",
        )


async def test_detach_force_works_outside_the_steady_states(
    kubeconfig: Path, namespace: str
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        slow = {"fixture.metal3.io/inspect": "steps:100000"}
        await c.apply_host(host("q1", namespace, annotations=slow))
        await c.wait_state("q1", "inspecting")
        plain = {"baremetalhost.metal3.io/detached": ""}
        await c.patch("q1", {"metadata": {"annotations": plain}})
        await anyio.sleep(0.5)
        obj = await c.get("q1")
        assert obj is not None and obj["status"]["operationalStatus"] != "detached"
        forced = {"baremetalhost.metal3.io/detached": '{"force": true}'}
        await c.patch("q1", {"metadata": {"annotations": forced}})
        await c.wait_for("q1", lambda o: (o or {})["status"]["operationalStatus"] == "detached")
