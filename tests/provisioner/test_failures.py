"""Failures through the direct provisioner, each ending in the right error with its message in
status.errorMessage and the hardware left as it should be: registration errors (upstream's
messages), an agent that never calls back (timeout, host powered off), root device hints that
match no disk, a checksum the image does not have, no agent boot media, no agent API; and
out-of-band inspection where no agent can boot."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from baremetalhost.kit import FAST, cluster, state
from loopdev import LoopDevices
from metal3.bmc.emulators import (
    FakeDrive,
    FakeSystem,
    IPMISimulator,
    SushyEmulator,
    free_port,
    silent_udp_port,
)
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA, SECRETS
from metal3.provisioner.direct.settings import AgentBootMedia, DirectSettings
from provisioner.harness import (
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
)

pytestmark = pytest.mark.anyio

USER, PASSWORD = "admin", "Right-pw-3"
# Errors are retried after minutes here, as upstream: a test sees the first one settle.
SLOW_RETRY = replace(FAST, error_backoff_unit=60.0)
QUICK = DirectSettings(
    media=AgentBootMedia(network_boot_server="the test, playing the hosts"),
    agent_timeout=60.0,
    poll_interval=0.3,
    agent_poll_interval=2.0,
    bmc_call_timeout=3.0,
    bmc_wait=0.5,
    power_timeout=30.0,
)


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    hub = Notifications()
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ImageServer, Image]]:
    root = tmp_path_factory.mktemp("failure-images")
    image = make_qcow2(root)
    server = ImageServer(root)
    yield server, image
    server.close()


def status(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("status") or {}


async def test_registration_errors_carry_upstream_messages(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    system = FakeSystem(name="reg")
    closed = free_port()  # nothing listens there
    with (
        SushyEmulator([system], users={USER: PASSWORD}) as redfish,
        IPMISimulator(users={USER: PASSWORD}) as ipmi,
        silent_udp_port() as silent,
    ):
        cases = {
            "rf-password": (redfish.address(system), "wrong"),
            "rf-closed": (f"redfish+http://127.0.0.1:{closed}/redfish/v1/Systems/x", PASSWORD),
            "ipmi-password": (ipmi.address(), "wrong"),
            "ipmi-silent": (f"ipmi://127.0.0.1:{silent}", PASSWORD),
            "libvirt-mac": (f"libvirt://127.0.0.1:{ipmi.port}", PASSWORD),
            "unknown": ("floppy://127.0.0.1", PASSWORD),
        }
        async with (
            cluster(kubeconfig, namespace) as c,
            direct_operator(kubeconfig, namespace, tmp_path / "tls", QUICK) as _,
        ):
            for name, (address, password) in cases.items():
                await c.client.create(SECRETS, bmc_secret(f"{name}-bmc", namespace, USER, password))
                manifest = bare_metal_host(name, namespace, address, "52:54:00:bb:00:01")
                if name == "libvirt-mac":
                    del manifest["spec"]["bootMACAddress"]
                await c.client.create(BAREMETALHOSTS, manifest)
            found = {}
            for name in cases:
                obj = await c.wait_for(
                    name, lambda o: bool(status(o).get("errorMessage")), timeout=60
                )
                assert obj is not None
                assert status(obj)["errorType"] == "registration error"
                assert state(obj) == "registering"
                found[name] = (obj["metadata"]["uid"], status(obj)["errorMessage"])

    def node(name: str) -> str:
        return f"Failed to get power state for node {found[name][0]}. Error: "

    message = {name: text for name, (_, text) in found.items()}
    assert message["rf-password"].startswith(node("rf-password"))
    assert "rejected the credentials (HTTP 401)" in message["rf-password"]
    assert message["rf-closed"] == (
        node("rf-closed") + f"Redfish connection failed for node {found['rf-closed'][0]}: "
        f"Unable to connect to http://127.0.0.1:{closed}. Error: cannot reach the BMC: "
        "connection refused (nothing listening?)"
    )
    assert message["ipmi-password"].startswith(
        node("ipmi-password") + "IPMI call failed: power status. Cause: the BMC rejected the "
        "credentials"
    )
    assert message["ipmi-silent"] == (
        node("ipmi-silent") + "IPMI call failed: power status. Cause: no answer from the BMC "
        "within 3s"
    )
    assert message["libvirt-mac"] == "BMC driver libvirt requires a BootMACAddress value"
    assert message["unknown"] == "Unknown BMC type 'floppy' for address floppy://127.0.0.1"
    for text in message.values():
        assert PASSWORD not in text and "wrong" not in text


async def test_an_agent_that_never_calls_back_times_out_and_the_host_is_powered_off(
    kubeconfig: Path, namespace: str, tmp_path: Path, notifications: Notifications
) -> None:
    # A generous BMC call deadline: on a loaded machine an IPMI call (a worker process to
    # start, a session to open) took longer than QUICK's 3 s, and the host's first error was
    # that BMC timeout instead of the agent's. The agent timeout is what is checked here.
    settings = replace(QUICK, agent_timeout=3.0, bmc_call_timeout=30.0)
    with IPMISimulator(users={USER: PASSWORD}, notify_url=notifications.ipmi_url("mute")) as sim:
        view = IPMIView(sim, USER, PASSWORD)
        async with (
            cluster(kubeconfig, namespace) as c,
            direct_operator(
                kubeconfig, namespace, tmp_path / "tls", settings, settings_fsm=SLOW_RETRY
            ) as (_, agent, _f),
        ):
            host = PlayedHost(
                "mute", view, "52:54:00:bb:00:02", tmp_path, tmp_path / "host", agent,
                start_agents=False,
            )  # fmt: skip
            with played(notifications, [host]):
                await c.client.create(SECRETS, bmc_secret("mute-bmc", namespace, USER, PASSWORD))
                await c.client.create(
                    BAREMETALHOSTS,
                    bare_metal_host("mute", namespace, sim.address(), "52:54:00:bb:00:02"),
                )
                obj = await c.wait_for(
                    "mute", lambda o: bool(status(o).get("errorMessage")), timeout=60
                )
                assert status(obj)["errorType"] == "inspection error"
                assert status(obj)["errorMessage"] == (
                    "the agent did not call back within 3s of its boot; the host was powered off"
                )
                assert state(obj) == "inspecting"
                with anyio.fail_after(10):
                    while (await anyio.to_thread.run_sync(view.read)).on:
                        await anyio.sleep(0.2)
            assert host.boots == ["agent"]  # booted to the agent once, never came up


async def test_hints_matching_no_disk_and_a_wrong_checksum(
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    loop_devices: LoopDevices,
    notifications: Notifications,
    images: tuple[ImageServer, Image],
) -> None:
    """Two hosts: one whose root device hints match none of its disks (a preparation error
    naming the hints, nothing cleaned), one given an image with a wrong checksum (a
    provisioning error with the agent's message, counted, and the disk left unbootable)."""
    server, image = images
    systems = [
        FakeSystem(name="hints", nics=(("52:54:00:cc:00:01", "10.1.0.1"),), external_notifier=True),
        FakeSystem(name="sum", nics=(("52:54:00:cc:00:02", "10.1.0.2"),), external_notifier=True),
    ]
    with SushyEmulator(
        systems, users={USER: PASSWORD}, power_delay=1, notify_url=notifications.redfish_url
    ) as redfish:
        players_spec = {}
        for system in systems:
            disk = Disk(loop_devices.new(4 * GiB), "LAB SSD", f"{system.name}-1", False)
            sysroot = make_sysroot(tmp_path / f"{system.name}-sysroot", system.nics[0][0], [disk])
            players_spec[system.name] = (system, disk, sysroot)
        async with (
            cluster(kubeconfig, namespace) as c,
            direct_operator(
                kubeconfig, namespace, tmp_path / "tls", QUICK, settings_fsm=SLOW_RETRY
            ) as (_, agent, _f),
        ):
            players = [
                PlayedHost(
                    name,
                    RedfishView(redfish, system, USER, PASSWORD),
                    system.nics[0][0],
                    sysroot,
                    tmp_path / f"{name}-host",
                    agent,
                )
                for name, (system, _, sysroot) in players_spec.items()
            ]
            with played(notifications, players):
                for name in players_spec:
                    await c.client.create(
                        SECRETS, bmc_secret(f"{name}-bmc", namespace, USER, PASSWORD)
                    )
                hints = bare_metal_host(
                    "hints", namespace, redfish.address(systems[0]), systems[0].nics[0][0],
                    rootDeviceHints={"serialNumber": "no-such-disk", "minSizeGigabytes": 2},
                )  # fmt: skip
                await c.client.create(BAREMETALHOSTS, hints)
                wrong = "0" * 64
                checksum = bare_metal_host(
                    "sum", namespace, redfish.address(systems[1]), systems[1].nics[0][0],
                    online=True,
                    image={"url": server.url(image.name), "checksum": wrong,
                           "checksumType": "sha256", "format": "qcow2"},
                )  # fmt: skip
                await c.client.create(BAREMETALHOSTS, checksum)

                obj = await c.wait_for(
                    "hints", lambda o: bool(status(o).get("errorMessage")), timeout=90
                )
                assert state(obj) == "preparing"
                assert status(obj)["errorType"] == "preparation error"
                disk = players_spec["hints"][1].device.path
                assert status(obj)["errorMessage"] == (
                    'no disk matches the root device hints {"minSizeGigabytes": 2, '
                    f'"serialNumber": "no-such-disk"}} ({disk}: serial "hints-1" is not '
                    '"no-such-disk")'
                )

                obj = await c.wait_for(
                    "sum", lambda o: status(o).get("errorType") == "provisioning error",
                    timeout=120,
                )  # fmt: skip
                message = status(obj)["errorMessage"]
                assert message.startswith("the agent's deploy failed: ")
                assert wrong in message and image.sha256 in message, message
                assert status(obj)["provisioningFailCount"] == 1
        hints_player = players[0]
        assert hints_player.boots == ["agent"]  # inspected; the hints stopped it before cleaning
        assert "running clean" not in hints_player.agent_logs()
        # The failed deploy left no bootable image: no partition table on the disk.
        sum_disk = players_spec["sum"][1].device.path
        table = await anyio.to_thread.run_sync(_partition_table, sum_disk)
        assert table == "", table


def _partition_table(disk: Path) -> str:
    from provisioner.harness import sh

    return sh("blkid", "-p", "-s", "PTTYPE", "-o", "value", disk, check=False).stdout.decode()


async def test_without_boot_media_the_agent_is_not_booted_and_redfish_inspects_out_of_band(
    kubeconfig: Path, namespace: str, tmp_path: Path, notifications: Notifications
) -> None:
    """No agent boot media configured: an IPMI host cannot be inspected (a clear error, the
    host never powered on); a Redfish host is inspected out of band, from its BMC, and
    cannot be provisioned (a clear error). The out-of-band annotation asks for the same even
    where boot media is configured."""
    nothing = replace(QUICK, media=AgentBootMedia())
    system = FakeSystem(
        name="oob",
        nics=(("52:54:00:dd:00:01", "10.2.0.1"), ("52:54:00:dd:00:02", "10.2.0.2")),
        drives=(FakeDrive(id="d0", name="Disk 0", capacity_bytes=480 * 10**9),),
        external_notifier=True,
    )
    with (
        SushyEmulator(
            [system], users={USER: PASSWORD}, power_delay=1, notify_url=notifications.redfish_url
        ) as redfish,
        IPMISimulator(users={USER: PASSWORD}, notify_url=notifications.ipmi_url("bare")) as sim,
    ):
        async with (
            cluster(kubeconfig, namespace) as c,
            direct_operator(
                kubeconfig, namespace, tmp_path / "tls", nothing, settings_fsm=SLOW_RETRY
            ) as (_, agent, _f),
        ):
            players = [
                PlayedHost("bare", IPMIView(sim, USER, PASSWORD), "52:54:00:dd:00:09",
                           tmp_path, tmp_path / "bare", agent),
                PlayedHost("oob", RedfishView(redfish, system, USER, PASSWORD),
                           system.nics[0][0], tmp_path, tmp_path / "oob", agent),
            ]  # fmt: skip
            with played(notifications, players):
                for name in ("bare", "oob"):
                    await c.client.create(
                        SECRETS, bmc_secret(f"{name}-bmc", namespace, USER, PASSWORD)
                    )
                await c.client.create(
                    BAREMETALHOSTS,
                    bare_metal_host("bare", namespace, sim.address(), "52:54:00:dd:00:09"),
                )
                await c.client.create(
                    BAREMETALHOSTS,
                    bare_metal_host(
                        "oob", namespace, redfish.address(system), system.nics[0][0],
                        automatedCleaningMode="disabled",
                    ),
                )  # fmt: skip
                obj = await c.wait_for(
                    "bare", lambda o: bool(status(o).get("errorMessage")), timeout=60
                )
                assert status(obj)["errorType"] == "inspection error"
                assert status(obj)["errorMessage"] == (
                    "no agent boot media configured for ipmi hosts (network boot): start the "
                    "operator with --agent-kernel-url and --agent-initramfs-url (served to the "
                    "hosts by your network boot server) or --lab DIR"
                )

                obj = await c.wait_state("oob", "available", timeout=60)
                hardware = status(obj)["hardware"]
                assert [n["mac"] for n in hardware["nics"]] == [m for m, _ in system.nics]
                assert [n.get("pxe") for n in hardware["nics"]] == [True, False]
                view = players[1].view
                assert isinstance(view, RedfishView)
                drive = await anyio.to_thread.run_sync(view.get, "/Storage/1/Drives/d0")
                assert hardware["storage"] == [
                    {
                        "name": drive["Name"],
                        "sizeBytes": drive["CapacityBytes"],
                        "vendor": drive["Manufacturer"],
                        "model": drive["Model"],
                        "serialNumber": drive["SerialNumber"],
                        "rotational": drive["MediaType"] == "HDD",
                        "type": drive["MediaType"],
                    }
                ]
                data = await c.client.get(HARDWAREDATA, namespace, "oob")
                assert data["spec"]["hardware"] == hardware
                await c.patch(
                    "oob",
                    {"spec": {"online": True, "image": {"url": "http://127.0.0.1:9/x.qcow2",
                                                        "checksum": "1" * 64,
                                                        "checksumType": "sha256"}}},
                )  # fmt: skip
                obj = await c.wait_for(
                    "oob", lambda o: status(o).get("errorType") == "provisioning error",
                    timeout=60,
                )  # fmt: skip
                assert status(obj)["errorMessage"].startswith(
                    "no agent boot media configured for redfish hosts (network boot)"
                ), status(obj)["errorMessage"]
        assert players[0].boots == []  # the IPMI host was never powered on
        assert "agent" not in players[1].boots  # nor the Redfish one booted to an agent


async def test_without_the_agent_api_the_agent_is_not_booted(
    kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    with IPMISimulator(users={USER: PASSWORD}) as sim:
        async with (
            cluster(kubeconfig, namespace) as c,
            direct_operator(
                kubeconfig, namespace, tmp_path / "tls", QUICK, serve_agent_api=False,
                settings_fsm=SLOW_RETRY,
            ),
        ):  # fmt: skip
            await c.client.create(SECRETS, bmc_secret("h-bmc", namespace, USER, PASSWORD))
            await c.client.create(
                BAREMETALHOSTS, bare_metal_host("h", namespace, sim.address(), "52:54:00:ee:00:01")
            )
            obj = await c.wait_for("h", lambda o: bool(status(o).get("errorMessage")), timeout=60)
            assert status(obj)["errorType"] == "inspection error"
            assert status(obj)["errorMessage"] == (
                "the agent is needed to inspect, but this operator does not serve the agent "
                "API: start it with --agent-listen (or --lab DIR)"
            )
        view = IPMIView(sim, USER, PASSWORD)
        assert not view.read().on
