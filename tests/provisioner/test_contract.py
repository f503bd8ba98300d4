"""The provisioner interface's extensions, as the state machine and the operator use them:
the exception contract (a provisioner that raises costs the host nothing but an error with a
message, written to its status), the stable provisioning ID, current vs target settings, and
`forget` when a host goes away."""

from __future__ import annotations

from pathlib import Path

import pytest

from baremetalhost.kit import FAST, cluster, host, running_operator
from baremetalhost.recording_provisioner import RecordingProvisioner
from baremetalhost.test_state_machine_table import RAID, SECRET_VERSION, USER_DATA, Row, manifest
from metal3.api.baremetalhost import BareMetalHost
from metal3.controllers.baremetalhost.state_machine import HostStateMachine, StepContext
from metal3.provisioner.base import Credentials, InspectionResult
from metal3.provisioner.fixture import FixtureProvisioner, FixtureProvisionerFactory

pytestmark = pytest.mark.anyio


class RaisingProvisioner(FixtureProvisioner):
    async def inspect(self, *, force: bool) -> InspectionResult:
        raise RuntimeError("the inventory parser tripped over a NUL byte")


class RaisingFactory(FixtureProvisionerFactory):
    """Fixture hardware, but inspection raises; making the provisioner for hosts named
    `unmakeable` raises too; and every uid the operator tells it to forget is kept."""

    forgotten: list[str]

    def for_host(self, host: BareMetalHost) -> FixtureProvisioner:
        assert host.metadata is not None
        if host.metadata.name == "unmakeable":
            raise KeyError("no hardware profile for this host")
        return RaisingProvisioner(self.world, host, self.behaviours(host))

    def forget(self, uid: str) -> None:
        self.forgotten.append(uid)


async def test_a_raising_provisioner_becomes_a_host_error_with_its_status_written(
    kubeconfig: Path, namespace: str
) -> None:
    async with cluster(kubeconfig, namespace) as c:
        factory = RaisingFactory(c.world)
        factory.forgotten = []
        async with running_operator(kubeconfig, c.world, namespace=namespace, provisioners=factory):
            await c.apply_host(host("raises", namespace))
            await c.apply_host(host("unmakeable", namespace))
            obj = await c.wait_for(
                "raises", lambda o: bool(((o or {}).get("status") or {}).get("errorType"))
            )
            assert obj is not None
            status = obj["status"]
            assert status["errorType"] == "inspection error"
            assert status["errorMessage"] == (
                "provisioner error in inspect: RuntimeError: the inventory parser tripped over "
                "a NUL byte"
            )
            assert status["operationalStatus"] == "error"
            assert status["errorCount"] >= 1
            assert status["provisioning"]["state"] == "inspecting"  # where it failed, kept

            obj = await c.wait_for(
                "unmakeable", lambda o: bool(((o or {}).get("status") or {}).get("errorType"))
            )
            assert obj is not None
            assert obj["status"]["errorType"] == "registration error"
            assert obj["status"]["errorMessage"] == (
                "provisioner error in making the provisioner: KeyError: 'no hardware profile "
                "for this host'"
            )
            events = await c.wait_events({"InspectionError"}, name="raises")
            assert {e["type"] for e in events if e["reason"] == "InspectionError"} == {"Warning"}

            # Deleting a host makes the operator free what the provisioner holds for it.
            raises = await c.get("raises")
            assert raises is not None
            await c.delete("raises")
            await c.wait_gone("raises")
            assert raises["metadata"]["uid"] in factory.forgotten


async def run_step(row: Row, provisioner: RecordingProvisioner) -> BareMetalHost:
    host_obj = BareMetalHost.from_json(manifest(row))

    async def user_data() -> tuple[str | None, str | None, str | None]:
        return USER_DATA

    ctx = StepContext(
        host=host_obj,
        provisioner=provisioner,
        credentials=Credentials("admin", "secret-pw"),
        credentials_version=SECRET_VERSION,
        settings=FAST,
        busy_elsewhere=lambda: 0,
        reserve_slot=lambda: None,
        user_data=user_data,
    )
    await HostStateMachine(ctx).run()
    return host_obj


async def test_registration_records_the_provisioning_id() -> None:
    provisioner = RecordingProvisioner(provisioning_id="uid-of-the-host")
    host_obj = await run_step(Row("id", "registering", registered=False), provisioner)
    assert host_obj.status is not None and host_obj.status.provisioning is not None
    assert host_obj.status.provisioning.id == "uid-of-the-host"
    # A provisioner without an ID of its own leaves the recorded one alone.
    kept = Row("keep", "registering", registered=False, provisioning={"ID": "moved-7"})
    host_obj = await run_step(kept, RecordingProvisioner(provisioning_id=None))
    assert host_obj.status is not None and host_obj.status.provisioning is not None
    assert host_obj.status.provisioning.id == "moved-7"


async def test_preparing_hands_over_target_and_current_settings() -> None:
    provisioner = RecordingProvisioner()
    row = Row(
        "settings",
        "preparing",
        spec={"raid": RAID, "rootDeviceHints": {"deviceName": "/dev/sdb"}},
        provisioning={"rootDeviceHints": {"deviceName": "/dev/sda"}},
    )
    await run_step(row, provisioner)
    data = provisioner.prepared_with
    assert data is not None
    assert data.raid is not None and data.raid.to_json() == RAID
    assert data.current_raid is None
    assert data.root_device_hints is not None
    assert data.root_device_hints.to_json() == {"deviceName": "/dev/sdb"}
    assert data.current_root_device_hints is not None
    assert data.current_root_device_hints.to_json() == {"deviceName": "/dev/sda"}
