"""The whole lifecycle through the direct provisioner, for a Redfish host (network boot), a
Redfish virtual-media host and an IPMI host at once: register, inspect (the agent's inventory
in status.hardware and HardwareData, then powered off), prepare (metadata cleaning), available,
provision (a real qcow2 from 127.0.0.1 onto a loop device, verified; boot from disk), then
delete: deprovision with metadata cleaning, powered off, virtual media ejected, gone. While an
agent works the provisioner does not poll: only the agent's reports wake the host.

Judged by what the hardware shows: the BMCs (Redfish GETs, ipmitool), the disks (`qemu-img
convert` reference bytes, `sgdisk --verify`, `bsdtar` on the config drive, `wipefs`), the
image server's request log, and what each host booted.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from baremetalhost.kit import cluster, state
from loopdev import LoopDevices
from metal3.bmc.emulators import FakeSystem, IPMISimulator, SushyEmulator
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA, SECRETS
from metal3.provisioner.direct.settings import AgentBootMedia, DirectSettings
from provisioner.harness import (
    SECTOR,
    Disk,
    GiB,
    Image,
    ImageServer,
    IPMIView,
    Notifications,
    PlayedHost,
    RedfishView,
    bare_metal_host,
    bmc_secret,
    direct_operator,
    make_qcow2,
    make_sysroot,
    played,
    read_at,
    sh,
)

pytestmark = pytest.mark.anyio

GPT_HEAD = 34 * SECTOR
REDFISH_USER, REDFISH_PASSWORD = "admin", "Redfish-pw-1"
IPMI_USER, IPMI_PASSWORD = "root", "Ipmi-pw-2"
USER_DATA = b"#cloud-config\nhostname: provisioned-by-metal3\n"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ImageServer, Image]]:
    root = tmp_path_factory.mktemp("provisioner-images")
    image = make_qcow2(root)
    (root / "agent.iso").write_bytes(b"the agent, as an ISO the BMC downloads\n" * 64)
    server = ImageServer(root)
    yield server, image
    server.close()


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    hub = Notifications()
    yield hub
    hub.close()


async def test_lifecycle_of_redfish_virtual_media_and_ipmi_hosts(
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    loop_devices: LoopDevices,
    images: tuple[ImageServer, Image],
    notifications: Notifications,
) -> None:
    server, image = images
    systems = [
        FakeSystem(name="rf", nics=(("52:54:00:aa:00:01", "10.0.0.1"),), external_notifier=True),
        FakeSystem(name="vm", nics=(("52:54:00:aa:00:02", "10.0.0.2"),), external_notifier=True),
    ]
    settings = DirectSettings(
        media=AgentBootMedia(
            iso_url=server.url("agent.iso"), network_boot_server="the test, playing the hosts"
        ),
        agent_timeout=120.0,
        poll_interval=0.3,
        # Never looked at again while an agent works: only its reports (the agent API's
        # on_result, straight to the controller's queue) wake the host.
        agent_poll_interval=600.0,
        power_timeout=30.0,
    )
    started = time.monotonic()
    with (
        SushyEmulator(
            systems,
            users={REDFISH_USER: REDFISH_PASSWORD},
            power_delay=1,
            notify_url=notifications.redfish_url,
        ) as redfish,
        IPMISimulator(
            users={IPMI_USER: IPMI_PASSWORD}, notify_url=notifications.ipmi_url("ipmi")
        ) as ipmi,
    ):
        notifications.follow_pending_power(redfish.url, REDFISH_USER, REDFISH_PASSWORD)
        hosts_spec: dict[str, dict[str, Any]] = {
            "rf": {
                "address": redfish.address(systems[0], "redfish"),
                "mac": systems[0].nics[0][0],
                "view": RedfishView(redfish, systems[0], REDFISH_USER, REDFISH_PASSWORD),
                "user": (REDFISH_USER, REDFISH_PASSWORD),
            },
            "vm": {
                "address": redfish.address(systems[1], "redfish-virtualmedia"),
                "mac": systems[1].nics[0][0],
                "view": RedfishView(redfish, systems[1], REDFISH_USER, REDFISH_PASSWORD),
                "user": (REDFISH_USER, REDFISH_PASSWORD),
            },
            "ipmi": {
                "address": ipmi.address(),
                "mac": "52:54:00:aa:00:03",
                "view": IPMIView(ipmi, IPMI_USER, IPMI_PASSWORD),
                "user": (IPMI_USER, IPMI_PASSWORD),
            },
        }
        disks: dict[str, list[Disk]] = {}
        for name, spec in hosts_spec.items():
            small = loop_devices.new(4 * GiB)
            large = loop_devices.new(5 * GiB)
            disks[name] = [
                Disk(small, "LAB SSD", f"{name}-ssd-1", rotational=False),
                Disk(large, "LAB HDD", f"{name}-hdd-2", rotational=True),
            ]
            make_sysroot(tmp_path / f"{name}-sysroot", spec["mac"], disks[name])
        timings: dict[str, dict[str, float]] = {}
        async with (
            cluster(kubeconfig, namespace) as c,
            direct_operator(kubeconfig, namespace, tmp_path / "tls", settings) as (_, agent, _f),
        ):
            players = [
                PlayedHost(
                    name,
                    spec["view"],
                    spec["mac"],
                    tmp_path / f"{name}-sysroot",
                    tmp_path / f"{name}-host",
                    agent,
                )
                for name, spec in hosts_spec.items()
            ]
            with played(notifications, players):
                for name, spec in hosts_spec.items():
                    await c.client.create(
                        SECRETS, bmc_secret(f"{name}-bmc", namespace, *spec["user"])
                    )
                    await c.client.create(
                        SECRETS,
                        {
                            "apiVersion": "v1",
                            "kind": "Secret",
                            "metadata": {"name": f"{name}-user-data", "namespace": namespace},
                            "data": {"userData": base64.b64encode(USER_DATA).decode()},
                        },
                    )
                async with anyio.create_task_group() as tg:
                    for name, spec in hosts_spec.items():
                        spec["disk"] = disks[name][0].device.path
                        tg.start_soon(_one_lifecycle, c, name, spec, image, server, timings)
            try:
                _check_hosts(players, disks, hosts_spec, image, server)
                # No agent was ever refused: a token is rotated only when its agent is gone.
                # (The API may still refuse the long poll a killed agent left open.)
                for player in players:
                    logs = player.agent_logs()
                    assert "looking the host up again" not in logs
                    assert "Traceback" not in logs
            except AssertionError:
                for player in players:
                    print(player.name, player.boots)
                    print(player.agent_logs()[-4000:])
                raise
    print(f"\nlifecycle of 3 hosts: {time.monotonic() - started:.1f} s in all")
    for name, phases in timings.items():
        print(f"  {name:5} " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))


async def _one_lifecycle(
    c: Any,
    name: str,
    spec: dict[str, Any],
    image: Image,
    server: ImageServer,
    timings: dict[str, dict[str, float]],
) -> None:
    namespace = c.namespace
    phases = timings.setdefault(name, {})
    mark = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[phase] = now - mark
        mark = now

    await c.client.create(
        BAREMETALHOSTS, bare_metal_host(name, namespace, spec["address"], spec["mac"])
    )
    await c.wait_state(name, "inspecting", timeout=60)
    lap("register")
    await c.wait_state(name, "preparing", timeout=120)
    lap("inspect")
    # Available and offline: powered off (the agent's session over) before provisioning; the
    # BMC says when (the status may still show the power of an earlier step).
    obj = await c.wait_state(name, "available", timeout=120)
    with anyio.fail_after(60):
        while (await anyio.to_thread.run_sync(spec["view"].read)).on:
            await anyio.sleep(0.2)
    lap("prepare (clean)")
    spec["available"] = obj
    spec["hardware_data"] = await c.client.get(HARDWAREDATA, namespace, name)
    await c.patch(
        name,
        {
            "spec": {
                "online": True,
                "image": {
                    "url": server.url(image.name),
                    "checksum": image.sha256,
                    "checksumType": "sha256",
                    "format": "qcow2",
                },
                "userData": {"name": f"{name}-user-data"},
            }
        },
    )
    obj = await c.wait_for(
        name,
        lambda o: state(o) == "provisioned" and bool((o or {})["status"].get("poweredOn")),
        timeout=180,
        what="provisioned and powered on",
    )
    lap("provision")
    spec["provisioned"] = obj
    spec["boot_after_provision"] = spec["view"].read()
    view = spec["view"]
    spec["boot_override"] = (
        view.boot_override() if isinstance(view, RedfishView) else view.boot_flags()
    )
    spec["disk_after_provision"] = await anyio.to_thread.run_sync(
        _disk_contents, spec["disk"], image
    )
    await c.delete(name)
    await c.wait_gone(name, timeout=180)
    lap("deprovision + delete")
    after = spec["view"].read()
    spec["power_after_delete"], spec["media_after_delete"] = after.on, after.media


def _disk_contents(disk: Path, image: Image) -> dict[str, Any]:
    """What the provisioned disk holds, by reference tools."""
    reference = image.reference.read_bytes()
    region = read_at(disk, 0, len(reference))
    info = sh("sgdisk", "--info=3", disk).stdout.decode()
    first = int(info.split("First sector: ")[1].split()[0])
    last = int(info.split("Last sector: ")[1].split()[0])
    iso = read_at(disk, first * SECTOR, (last - first + 1) * SECTOR)
    return {
        "image_region_matches": region[GPT_HEAD:] == reference[GPT_HEAD:],
        "verify": sh("sgdisk", "--verify", disk).stdout.decode(),
        "config_drive_label": "Partition name: 'config-2'" in info,
        "iso": iso,
    }


def _check_hosts(
    players: list[PlayedHost],
    disks: dict[str, list[Disk]],
    hosts_spec: dict[str, dict[str, Any]],
    image: Image,
    server: ImageServer,
) -> None:
    for player in players:
        name = player.name
        spec = hosts_spec[name]
        small, large = (d.device for d in disks[name])

        # Inspection: the agent's inventory, as status.hardware and HardwareData.
        available = spec["available"]
        hardware = available["status"]["hardware"]
        assert spec["hardware_data"]["spec"]["hardware"] == hardware
        storage = {s["name"]: s for s in hardware["storage"]}
        assert set(storage) == {str(small.path), str(large.path)}, storage
        assert storage[str(small.path)]["sizeBytes"] == 4 * GiB
        assert storage[str(small.path)]["serialNumber"] == f"{name}-ssd-1"
        assert storage[str(large.path)]["type"] == "HDD"
        assert {n["mac"] for n in hardware["nics"]} == {spec["mac"]}  # one per address
        assert hardware["cpu"]["arch"] == "x86_64"
        assert available["status"]["provisioning"]["ID"] == available["metadata"]["uid"]

        # Provisioned: powered on, booting the disk persistently, the OS booted.
        provisioned = spec["provisioned"]
        assert provisioned["status"]["provisioning"]["image"]["url"] == server.url(image.name)
        boot = spec["boot_after_provision"]
        assert boot.on and boot.boot == "disk", boot
        if isinstance(spec["view"], RedfishView):
            assert spec["boot_override"] == ("Hdd", "Continuous")
        else:
            assert spec["boot_override"] == ("disk", True)
        # What each power on booted: the agent for inspect, clean, deploy; the OS from its
        # disk; the agent again for the deprovisioning clean.
        assert player.boots == ["agent", "agent", "agent", "disk", "agent"], player.boots

        # The image went to the smallest disk of at least 4 GiB (no hints), verified, with
        # the config drive holding the user data (read by bsdtar from the disk's bytes).
        contents = spec["disk_after_provision"]
        assert contents["image_region_matches"]
        assert "No problems found" in contents["verify"], contents["verify"]
        assert contents["config_drive_label"]
        iso_file = player.workdir / "config-drive.iso"
        iso_file.write_bytes(contents["iso"])
        assert sh("bsdtar", "-xOf", iso_file, "openstack/latest/user_data").stdout == USER_DATA
        meta = json.loads(sh("bsdtar", "-xOf", iso_file, "openstack/latest/meta_data.json").stdout)
        assert meta["uuid"] == available["metadata"]["uid"]
        assert meta["metal3-name"] == name

        # Deleted: deprovisioned with metadata cleaning, powered off.
        assert spec["power_after_delete"] is False
        assert spec["media_after_delete"] is None  # the agent's ISO ejected (virtual media)
        for disk in (small, large):
            signatures = sh("wipefs", "--no-act", "--noheadings", disk.path).stdout.decode()
            assert signatures.strip() == "", (name, disk.path, signatures)

    # Each host's image was fetched whole once: one provisioning each, never written again.
    assert server.complete_gets(image.name) == 3, server.requests
