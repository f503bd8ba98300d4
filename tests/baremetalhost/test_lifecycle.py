"""The BareMetalHost lifecycle, transition by transition, on the embedded API server."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from baremetalhost.kit import IMAGE, cluster, condition, host, running_operator, secret, state
from metal3.kube.client import ApiError
from metal3.kube.resources import HARDWAREDATA, SECRETS

pytestmark = pytest.mark.anyio


async def test_register_inspect_prepare_available(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("h1", namespace))
        await c.wait_state("h1", "available")
        obj = await c.wait_for("h1", lambda o: condition(o or {}, "Ready") == "True")
        assert obj is not None
        status = obj["status"]
        assert status["poweredOn"] is True
        assert obj["metadata"]["finalizers"] == ["baremetalhost.metal3.io"]
        assert status["operationalStatus"] == "OK"
        assert "errorType" not in status
        assert status["hardware"]["hostname"] == "h1"
        history = status["operationHistory"]
        for step in ("register", "inspect"):
            assert history[step]["start"] and history[step]["end"], step
        assert status["goodCredentials"]["credentials"]["name"] == "h1-bmc"
        assert condition(obj, "AvailableForProvisioning") == "True"
        hd = await c.client.get(HARDWAREDATA, namespace, "h1")
        assert hd["spec"]["hardware"] == status["hardware"]
        events = await c.wait_events(
            {"Registering", "InspectionStarted", "Available", "PowerOn"}, name="h1"
        )
        assert all(e["source"]["component"] == "metal3-baremetal-controller" for e in events)
        owner = hd["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "BareMetalHost",
            "h1",
            obj["metadata"]["uid"],
        )


async def test_provision_then_deprovision_by_removing_the_image(
    kubeconfig: Path, namespace: str
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("h2", namespace, image=IMAGE))
        obj = await c.wait_state("h2", "provisioned")
        assert obj["status"]["provisioning"]["image"]["url"] == IMAGE["url"]
        assert obj["status"]["poweredOn"] is True
        assert c.world.count(c.uid(obj), "provision") == 1
        await c.patch("h2", {"spec": {"image": None}})
        obj = await c.wait_state("h2", "available")
        assert "image" not in obj["status"]["provisioning"]
        assert c.world.count(c.uid(obj), "deprovision") == 1
        assert state(obj) == "available"


async def test_no_bmc_is_unmanaged_until_bmc_details_arrive(
    kubeconfig: Path, namespace: str
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("u1", namespace, bmc=False))
        obj = await c.wait_state("u1", "unmanaged")
        assert obj["status"]["operationalStatus"] == "discovered"
        assert condition(obj, "Manageable") == "False"
        await c.client.create(SECRETS, secret("u1-bmc", namespace))
        await c.patch(
            "u1",
            {"spec": {"bmc": {"address": "ipmi://10.0.0.9", "credentialsName": "u1-bmc"}}},
        )
        obj = await c.wait_state("u1", "available")
        assert obj["status"]["operationalStatus"] == "OK"
        assert condition(obj, "Manageable") == "True"


@pytest.mark.parametrize(
    ("spec", "annotations"),
    [
        ({"inspectionMode": "disabled"}, None),
        ({}, {"inspect.metal3.io": "disabled"}),
    ],
    ids=["inspectionMode", "annotation"],
)
async def test_inspection_disabled_skips_inspecting(
    kubeconfig: Path, namespace: str, spec: dict[str, str], annotations: dict[str, str] | None
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("n1", namespace, annotations=annotations, **spec))
        obj = await c.wait_state("n1", "available")
        assert "inspect" not in obj["status"].get("operationHistory", {})
        assert c.world.count(c.uid(obj), "inspect") == 0
        assert "hardware" not in obj["status"]


async def test_hardwaredetails_annotation_stands_in_for_inspection(
    kubeconfig: Path, namespace: str
) -> None:
    details = '{"hostname": "from-annotation", "ramMebibytes": 1024, "cpu": {"count": 4}}'
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        annotations = {"inspect.metal3.io/hardwaredetails": details}
        await c.apply_host(
            host("d1", namespace, annotations=annotations, inspectionMode="disabled")
        )
        obj = await c.wait_state("d1", "available")
        assert obj["status"]["hardware"]["hostname"] == "from-annotation"
        assert "inspect.metal3.io/hardwaredetails" not in obj["metadata"].get("annotations", {})
        hd = await c.client.get(HARDWAREDATA, namespace, "d1")
        assert hd["spec"]["hardware"]["ramMebibytes"] == 1024


async def test_reinspection_on_annotation(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("r1", namespace))
        obj = await c.wait_state("r1", "available")
        uid = c.uid(obj)
        assert c.world.count(uid, "inspect") == 1
        await c.patch("r1", {"metadata": {"annotations": {"inspect.metal3.io": ""}}})
        await c.wait_for("r1", lambda o: c.world.count(uid, "inspect") == 2, what="re-inspection")
        obj = await c.wait_for(
            "r1",
            lambda o: (
                state(o) == "available"
                and "inspect.metal3.io" not in (o or {})["metadata"].get("annotations", {})
            ),
            what="available without the inspect annotation",
        )


async def test_raid_or_root_hints_change_prepares_again(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("p1", namespace))
        obj = await c.wait_state("p1", "available")
        uid = c.uid(obj)
        assert c.world.count(uid, "prepare") == 1
        raid = {"hardwareRAIDVolumes": [{"level": "1", "numberOfPhysicalDisks": 2}]}
        await c.patch("p1", {"spec": {"raid": raid}})
        obj = await c.wait_for(
            "p1",
            lambda o: (
                (o or {}).get("status", {}).get("provisioning", {}).get("raid") is not None
                and state(o) == "available"
            ),
            what="RAID applied",
        )
        assert obj is not None and obj["status"]["provisioning"]["raid"] == raid
        assert c.world.count(uid, "prepare") == 2
        await c.patch("p1", {"spec": {"rootDeviceHints": {"deviceName": "/dev/sdb"}}})
        await c.wait_for("p1", lambda o: c.world.count(uid, "prepare") == 3, what="prepare")
        obj = await c.wait_state("p1", "available")
        assert obj["status"]["provisioning"]["rootDeviceHints"] == {"deviceName": "/dev/sdb"}


async def test_image_change_reprovisions(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("i1", namespace, image=IMAGE))
        obj = await c.wait_state("i1", "provisioned")
        uid = c.uid(obj)
        new_image = {**IMAGE, "url": "http://192.0.2.1/images/os-v2.qcow2"}
        await c.patch("i1", {"spec": {"image": new_image}})
        obj = await c.wait_for(
            "i1",
            lambda o: (
                state(o) == "provisioned"
                and (o or {})["status"]["provisioning"]["image"]["url"] == new_image["url"]
            ),
            what="re-provisioned",
        )
        assert c.world.count(uid, "deprovision") == 1
        assert c.world.count(uid, "provision") == 2


async def test_online_false_keeps_a_provisioned_host_off(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("o1", namespace, image=IMAGE))
        await c.wait_state("o1", "provisioned")
        await c.patch("o1", {"spec": {"online": False}})
        obj = await c.wait_for("o1", lambda o: (o or {})["status"]["poweredOn"] is False)
        assert obj is not None and state(obj) == "provisioned"
        await c.patch("o1", {"spec": {"online": True}})
        await c.wait_for("o1", lambda o: (o or {})["status"]["poweredOn"] is True)


async def test_custom_deploy_provisions_without_an_image(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("c1", namespace, customDeploy={"method": "install_coreos"}))
        obj = await c.wait_state("c1", "provisioned")
        assert obj["status"]["provisioning"]["customDeploy"] == {"method": "install_coreos"}
        assert c.world.hosts[c.uid(obj)].workload == "custom:install_coreos"


async def test_offline_host_with_image_is_not_provisioned(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("f1", namespace, image=IMAGE, online=False))
        obj = await c.wait_state("f1", "available")
        await c.wait_for("f1", lambda o: condition(o or {}, "Ready") == "True")
        assert c.world.count(c.uid(obj), "provision") == 0
        await c.patch("f1", {"spec": {"online": True}})
        await c.wait_state("f1", "provisioned")


async def test_externally_provisioned_both_ways(kubeconfig: Path, namespace: str) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("e1", namespace, externallyProvisioned=True))
        obj = await c.wait_state("e1", "externally provisioned")
        uid = c.uid(obj)
        assert c.world.count(uid, "inspect") == 0
        await c.wait_for("e1", lambda o: condition(o or {}, "Provisioned") == "True")
        await c.patch("e1", {"spec": {"externallyProvisioned": False}})
        obj = await c.wait_state("e1", "available")
        assert c.world.count(uid, "inspect") == 1  # never inspected before: inspect now
        await c.patch("e1", {"spec": {"externallyProvisioned": True}})
        await c.wait_state("e1", "externally provisioned")


@pytest.mark.parametrize(
    ("spec", "reach", "path"),
    [
        ({"bmc": False}, "unmanaged", ["deleting"]),
        ({}, "available", ["powering off before delete", "deleting"]),
        ({"image": IMAGE}, "provisioned", ["deprovisioning", "powering off before delete"]),
        (
            {"externallyProvisioned": True},
            "externally provisioned",
            ["powering off before delete", "deleting"],
        ),
        (
            {"annotations": {"fixture.metal3.io/inspect": "steps:100000"}},
            "inspecting",
            ["powering off before delete", "deleting"],
        ),
    ],
    ids=["unmanaged", "available", "provisioned", "externally-provisioned", "inspecting"],
)
async def test_deletion_takes_the_right_path(
    kubeconfig: Path, namespace: str, spec: dict[str, object], reach: str, path: list[str]
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        manifest = host("x1", namespace, bmc=bool(spec.pop("bmc", True)), **spec)  # type: ignore[arg-type]
        await c.apply_host(manifest)
        obj = await c.wait_state("x1", reach)
        uid = c.uid(obj)
        # Hold the host at each step of the deletion path with fixture behaviour, to see it.
        await c.patch(
            "x1",
            {
                "metadata": {
                    "annotations": {
                        "fixture.metal3.io/deprovision": "steps:8",
                        "fixture.metal3.io/power": "steps:8",
                        "fixture.metal3.io/delete": "steps:8",
                    }
                }
            },
        )
        await c.wait_for(
            "x1",
            lambda o: "fixture.metal3.io/delete" in (o or {})["metadata"].get("annotations", {}),
        )
        seen: list[str] = []
        async with anyio.create_task_group() as tg:
            await tg.start(c.record_states, "x1", seen)
            await c.delete("x1")
        assert seen[-1] == "<gone>"
        for step in path:
            assert step in seen, (step, seen)
        assert seen.index(path[0]) <= seen.index(path[-1])
        if reach == "provisioned":
            assert c.world.count(uid, "deprovision") == 1
        else:
            assert c.world.count(uid, "deprovision") == 0
        # The HardwareData goes with its host (garbage collection by owner reference).
        if reach not in ("unmanaged", "inspecting", "externally provisioned"):
            for _ in range(100):
                try:
                    await c.client.get(HARDWAREDATA, namespace, "x1")
                except ApiError as exc:
                    assert exc.not_found
                    break
                await anyio.sleep(0.05)
            else:
                raise AssertionError("HardwareData outlived its host")


async def test_deleting_a_host_whose_credentials_never_worked(
    kubeconfig: Path, namespace: str
) -> None:
    async with (
        cluster(kubeconfig, namespace) as c,
        running_operator(kubeconfig, c.world, namespace=namespace),
    ):
        await c.apply_host(host("y1", namespace), with_secret=False)
        await c.wait_for(
            "y1", lambda o: (o or {}).get("status", {}).get("errorType") == "registration error"
        )
        seen: list[str] = []
        async with anyio.create_task_group() as tg:
            await tg.start(c.record_states, "y1", seen)
            await c.delete("y1")
        assert "deleting" in seen and "powering off before delete" not in seen
        assert seen[-1] == "<gone>"
