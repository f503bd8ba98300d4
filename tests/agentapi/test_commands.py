"""What a host's agent is told to do: one table from the host's state (and its agent record)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from metal3.agentapi.commands import COMMAND_ID, RULES, command_of, plan
from metal3.agentapi.records import AgentRecord, RecordedResult

UID = "5d1c3a8e-0000-4000-8000-000000000001"
IMAGE = {
    "url": "http://192.0.2.10/os.qcow2",
    "checksum": "a" * 64,
    "checksumType": "sha256",
    "format": "qcow2",
}
HISTORY = {
    "register": {"start": "2026-01-01T10:00:00Z", "end": "2026-01-01T10:00:05Z"},
    "inspect": {"start": "2026-01-01T10:00:05Z", "end": "2026-01-01T10:03:00Z"},
    "provision": {"start": "2026-01-01T10:05:00Z", "end": None},
}


def host(state: str, *, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "h1", "namespace": "ns", "uid": UID, "annotations": annotations or {}},
        "spec": {"online": True, **spec},
        "status": {
            "provisioning": {"state": state, "ID": "x"},
            "operationalStatus": "OK",
            "operationHistory": copy.deepcopy(HISTORY),
        },
    }


def record(**results: str) -> AgentRecord:
    """A record with a token and results given as command id -> status."""
    rec = AgentRecord(host_uid=UID, token_hash="f" * 64, token_id="0123456789abcdef")
    for command_id, status in results.items():
        rec.results[command_id] = RecordedResult(
            command_of(command_id) or "", status, {}, None, "2026-01-01T10:06:00Z"
        )
    return rec


# (case, state, spec, annotations, expected command)
TABLE: list[tuple[str, str, dict[str, Any], dict[str, str], str]] = [
    ("new host", "", {}, {}, "wait"),
    ("registering", "registering", {}, {}, "wait"),
    ("inspecting", "inspecting", {}, {}, "inspect"),
    ("preparing, cleaning on", "preparing", {}, {}, "clean"),
    ("preparing, cleaning off", "preparing", {"automatedCleaningMode": "disabled"}, {}, "wait"),
    ("available, online: fast track", "available", {}, {}, "wait"),
    ("available, offline", "available", {"online": False}, {}, "power_off"),
    ("ready (legacy), offline", "ready", {"online": False}, {}, "power_off"),
    (
        "available, offline, power off disabled",
        "available",
        {"online": False, "disablePowerOff": True},
        {},
        "wait",
    ),
    ("provisioning an image", "provisioning", {"image": IMAGE}, {}, "deploy"),
    (
        "provisioning a custom deploy",
        "provisioning",
        {"customDeploy": {"method": "install_coreos"}},
        {},
        "custom_deploy",
    ),
    ("provisioning nothing", "provisioning", {}, {}, "wait"),
    ("provisioned", "provisioned", {"image": IMAGE}, {}, "reboot_to_disk"),
    ("externally provisioned", "externally provisioned", {}, {}, "wait"),
    ("deprovisioning, cleaning on", "deprovisioning", {}, {}, "clean"),
    (
        "deprovisioning, cleaning off",
        "deprovisioning",
        {"automatedCleaningMode": "disabled"},
        {},
        "wait",
    ),
    ("powering off before delete", "powering off before delete", {}, {}, "power_off"),
    ("deleting", "deleting", {}, {}, "power_off"),
    ("deleting, power off disabled", "deleting", {"disablePowerOff": True}, {}, "wait"),
    ("paused", "inspecting", {}, {"baremetalhost.metal3.io/paused": ""}, "wait"),
]


@pytest.mark.parametrize(
    ("state", "spec", "annotations", "expected"),
    [case[1:] for case in TABLE],
    ids=[case[0] for case in TABLE],
)
def test_the_command_for_each_state(
    state: str, spec: dict[str, Any], annotations: dict[str, str], expected: str
) -> None:
    command = plan(host(state, annotations=annotations, **spec), record())
    assert command.name == expected
    assert COMMAND_ID.match(command.id), command.id
    assert command_of(command.id) == expected
    if expected == "wait":
        assert command.args["reason"]


def test_every_state_in_the_table_is_a_provisioning_state() -> None:
    from metal3.api.constants import ProvisioningState

    assert set(RULES) <= {str(s) for s in ProvisioningState}


def test_a_detached_host_waits() -> None:
    obj = host("provisioning", image=IMAGE)
    obj["status"]["operationalStatus"] = "detached"
    assert plan(obj, record()).name == "wait"


def test_deploy_args_carry_image_hints_and_identity() -> None:
    hints = {"deviceName": "/dev/sdb", "minSizeGigabytes": 10}
    command = plan(host("provisioning", image=IMAGE, rootDeviceHints=hints), record())
    assert command.args == {
        "image": IMAGE,
        "rootDeviceHints": hints,
        "configDrive": None,
        "host": {"uuid": UID, "namespace": "ns", "name": "h1"},
    }


def test_clean_args_follow_the_hints() -> None:
    assert plan(host("preparing"), record()).args == {"mode": "metadata", "rootDeviceHints": None}
    with_hints = plan(host("deprovisioning", rootDeviceHints={"deviceName": "/dev/sda"}), record())
    assert with_hints.args == {"mode": "metadata", "rootDeviceHints": {"deviceName": "/dev/sda"}}


def test_ids_are_stable_for_the_same_work_and_change_with_it() -> None:
    first = plan(host("provisioning", image=IMAGE), record())
    # The same host state read again (an operator restart reads it from the API): same id.
    assert plan(host("provisioning", image=IMAGE), record()).id == first.id
    # Unrelated status changes (conditions, lastUpdated, power) do not change it.
    busy = host("provisioning", image=IMAGE)
    busy["status"]["lastUpdated"] = "2026-01-01T10:05:30Z"
    busy["status"]["poweredOn"] = True
    assert plan(busy, record()).id == first.id
    other_checksum = plan(host("provisioning", image={**IMAGE, "checksum": "b" * 64}), record())
    assert other_checksum.id != first.id
    other_url = plan(host("provisioning", image={**IMAGE, "url": "http://x/y.raw"}), record())
    assert other_url.id != first.id
    again = host("provisioning", image=IMAGE)
    again["status"]["operationHistory"]["provision"]["start"] = "2026-01-02T00:00:00Z"
    assert plan(again, record()).id != first.id  # a new provisioning is new work
    other_host = host("provisioning", image=IMAGE)
    other_host["metadata"]["uid"] = "another"
    assert plan(other_host, record()).id != first.id


def test_recorded_work_is_not_asked_again() -> None:
    for state, spec in (("inspecting", {}), ("preparing", {}), ("provisioning", {"image": IMAGE})):
        work = plan(host(state, **spec), record())
        for status in ("succeeded", "failed"):
            after = plan(host(state, **spec), record(**{work.id: status}))
            assert after.name == "wait"
            assert status in after.args["reason"]


def test_preparing_again_with_other_settings_is_new_work() -> None:
    first = plan(host("preparing"), record())
    changed = plan(host("preparing", rootDeviceHints={"deviceName": "/dev/sdb"}), record())
    assert changed.id != first.id
    # Back to the first settings, but after they were changed and applied: new work too.
    back = host("preparing")
    back["status"]["provisioning"]["rootDeviceHints"] = {"deviceName": "/dev/sdb"}
    assert plan(back, record()).id not in (first.id, changed.id)


def test_terminal_commands_are_asked_once_per_token() -> None:
    provisioned = host("provisioned", image=IMAGE)
    first = plan(provisioned, record())
    assert first.name == "reboot_to_disk"
    assert plan(provisioned, record(**{first.id: "succeeded"})).name == "wait"
    next_boot = record()
    next_boot.token_id = "fedcba9876543210"  # a new token: the agent booted again
    again = plan(provisioned, next_boot)
    assert again.name == "reboot_to_disk"
    assert again.id != first.id


def test_wait_ids_are_stable() -> None:
    assert plan(host("registering"), record()).id == plan(host("registering"), record()).id


def test_work_for_names_the_work_plan_asks_for_done_or_not() -> None:
    from metal3.agentapi.commands import Command, work_for

    for state, spec in (("inspecting", {}), ("preparing", {}), ("provisioning", {"image": IMAGE})):
        asked = plan(host(state, **spec), record())
        work = work_for(host(state, **spec), record())
        assert isinstance(work, Command) and (work.id, work.name) == (asked.id, asked.name)
        # Done, plan says wait; work_for still names the work (the provisioner reads its result).
        done = work_for(host(state, **spec), record(**{asked.id: "succeeded"}))
        assert isinstance(done, Command) and done.id == asked.id
    assert isinstance(work_for(host("registering"), record()), str)


def test_a_retry_after_an_error_is_new_work_but_a_deploy_is_not() -> None:
    """Inspecting and cleaning count status.errorCount in their identity, so the attempt after
    a failure is asked anew (also of an agent that kept the failed outcome); a deploy's id
    ignores it, so a BMC error in the middle of a deploy never makes it new work."""
    for state in ("inspecting", "preparing", "deprovisioning"):
        first = host(state)
        retry = host(state)
        retry["status"]["errorCount"] = 1
        assert plan(retry, record()).id != plan(first, record()).id, state
        failed_before = record(**{plan(first, record()).id: "failed"})
        assert plan(retry, failed_before).name != "wait", state
    deploying = host("provisioning", image=IMAGE)
    flapped = host("provisioning", image=IMAGE)
    flapped["status"]["errorCount"] = 2
    assert plan(flapped, record()).id == plan(deploying, record()).id
