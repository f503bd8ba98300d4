"""Power through the direct provisioner on IPMI hosts. One whose OS ignores soft power off (as a
hung OS does): powering off softly falls back to a hard power off after the soft timeout; the
reboot annotation powers off and on again; detaching drops the host's session and attaching
again registers anew (no agent: the host is externally provisioned). One whose BMC acknowledges
power requests and loses them: each is sent again, the agent's boot included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from baremetalhost.kit import cluster, state
from loopdev import LoopDevices
from metal3.bmc.emulators import IPMISimulator
from metal3.kube.resources import BAREMETALHOSTS, SECRETS
from metal3.provisioner.direct.settings import AgentBootMedia, DirectSettings
from provisioner.harness import (
    Disk,
    GiB,
    IPMIView,
    Notifications,
    PlayedHost,
    PowerLog,
    bare_metal_host,
    bmc_secret,
    direct_operator,
    make_sysroot,
    played,
)

pytestmark = pytest.mark.anyio

USER, PASSWORD = "admin", "Power-pw-5"
SOFT_TIMEOUT = 2.0


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    hub = Notifications()
    yield hub
    hub.close()


def powered(obj: dict[str, Any] | None) -> bool | None:
    return ((obj or {}).get("status") or {}).get("poweredOn")  # type: ignore[no-any-return]


async def test_soft_off_falls_back_to_hard_reboot_and_detach(
    kubeconfig: Path, namespace: str, tmp_path: Path, notifications: Notifications
) -> None:
    settings = replace(DirectSettings(), soft_power_off_timeout=SOFT_TIMEOUT, poll_interval=0.2)
    log = PowerLog()
    notifications.hosts["hung"] = log
    with IPMISimulator(
        users={USER: PASSWORD}, ignore_soft_off=True, notify_url=notifications.ipmi_url("hung")
    ) as sim:
        view = IPMIView(sim, USER, PASSWORD)
        async with (
            cluster(kubeconfig, namespace) as c,
            direct_operator(kubeconfig, namespace, tmp_path / "tls", settings) as (_, _a, factory),
        ):
            await c.client.create(SECRETS, bmc_secret("hung-bmc", namespace, USER, PASSWORD))
            manifest = bare_metal_host(
                "hung", namespace, sim.address(), "52:54:00:99:00:01",
                online=True, externallyProvisioned=True,
            )  # fmt: skip
            await c.client.create(BAREMETALHOSTS, manifest)
            obj = await c.wait_for(
                "hung",
                lambda o: state(o) == "externally provisioned" and powered(o) is True,
                what="externally provisioned and on",
            )
            assert obj is not None and view.read().on
            uid = obj["metadata"]["uid"]
            assert obj["status"]["provisioning"]["ID"] == uid

            # Soft off: the OS ignores it; after the soft timeout the host is powered off hard.
            log.events.clear()
            asked = time.monotonic()
            await c.patch("hung", {"spec": {"online": False}})
            await c.wait_for("hung", lambda o: powered(o) is False, what="powered off")
            offs = [t for t, on in log.events if not on]
            assert offs, log.events
            assert offs[0] - asked >= SOFT_TIMEOUT  # not before the soft timeout
            assert not view.read().on

            # The reboot annotation on a host that is on: off, then on again; then consumed.
            await c.patch("hung", {"spec": {"online": True}})
            await c.wait_for("hung", lambda o: powered(o) is True, what="powered on")
            log.events.clear()
            reboot = {"reboot.metal3.io": '{"mode": "hard"}'}
            await c.patch("hung", {"metadata": {"annotations": reboot}})
            obj = await c.wait_for(
                "hung",
                lambda o: (
                    "reboot.metal3.io" not in (o or {})["metadata"].get("annotations", {})
                    and powered(o) is True
                ),
                what="rebooted",
            )
            assert [on for _, on in log.events] == [False, True]

            # Detached: the provisioner lets go of the host's session; attached: registers again.
            session = factory.sessions[uid]
            assert session.registered and session.bmc is not None
            detached = {"baremetalhost.metal3.io/detached": ""}
            await c.patch("hung", {"metadata": {"annotations": detached}})
            await c.wait_for(
                "hung",
                lambda o: (o or {})["status"].get("operationalStatus") == "detached",
                what="detached",
            )
            with anyio.fail_after(10):  # closed (a reconcile may make a new, empty one)
                while factory.sessions.get(uid) is session:
                    await anyio.sleep(0.05)
            assert session.bmc is None and not session.registered
            later = factory.sessions.get(uid)
            assert later is None or (later.bmc is None and not later.registered)
            await c.patch(
                "hung", {"metadata": {"annotations": {"baremetalhost.metal3.io/detached": None}}}
            )
            await c.wait_for(
                "hung",
                lambda o: (o or {})["status"].get("operationalStatus") == "OK",
                what="attached again",
            )
            with anyio.fail_after(10):
                while uid not in factory.sessions or not factory.sessions[uid].registered:
                    await anyio.sleep(0.05)
            assert view.read().on  # detaching and attaching left the power alone


async def test_power_requests_the_bmc_lost_are_sent_again(
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    loop_devices: LoopDevices,
    notifications: Notifications,
) -> None:
    """The BMC answers every power request and loses the 1st (the agent's boot for inspection)
    and the 3rd (the power off after it), as sushy-tools' libvirt driver lost a power off that
    came 70 ms after a power on. Each is sent again after `power_resend_interval`: the host is
    inspected with one agent boot and ends off, well before the power timeout (which, before
    the re-send, was the only way on: an inspection error for the power off)."""
    resend = 2.0
    settings = DirectSettings(
        media=AgentBootMedia(network_boot_server="the test, playing the host"),
        agent_timeout=120.0,
        poll_interval=0.2,
        agent_poll_interval=2.0,
        power_timeout=100.0,
        power_resend_interval=resend,
    )
    mac = "52:54:00:99:00:02"
    disk = Disk(loop_devices.new(4 * GiB), "LAB SSD", "lossy-ssd", rotational=False)
    sysroot = make_sysroot(tmp_path / "sysroot", mac, [disk])
    with IPMISimulator(
        users={USER: PASSWORD},
        lose_power_requests=[1, 3],
        notify_url=notifications.ipmi_url("lossy"),
    ) as sim:
        view = IPMIView(sim, USER, PASSWORD)
        async with (
            cluster(kubeconfig, namespace) as c,
            direct_operator(kubeconfig, namespace, tmp_path / "tls", settings) as (_, agent, _f),
        ):
            host = PlayedHost("lossy", view, mac, sysroot, tmp_path / "host", agent)
            with played(notifications, [host]):
                await c.client.create(SECRETS, bmc_secret("lossy-bmc", namespace, USER, PASSWORD))
                created = time.monotonic()
                await c.client.create(
                    BAREMETALHOSTS,
                    bare_metal_host(
                        "lossy", namespace, sim.address(), mac, automatedCleaningMode="disabled"
                    ),
                )
                obj = await c.wait_for(
                    "lossy",
                    lambda o: (
                        state(o) == "available"
                        or bool(((o or {}).get("status") or {}).get("errorType"))
                    ),
                    what="available (or an error)",
                    timeout=60,
                )
                took = time.monotonic() - created
                assert state(obj) == "available", obj["status"]
                assert obj["status"]["hardware"]["nics"][0]["mac"] == mac
                assert not view.read().on
                assert powered(obj) is False
            assert host.boots == ["agent"]  # the lost boot was not taken for a boot
            assert took >= 2 * resend  # two requests were sent again, each after the interval
