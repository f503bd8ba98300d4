"""The state machine rules discovery relies on, one step at a time (the BareMetalHost state
machine table's harness): a host with a BMC address but no credentials is discovered and
stays unmanaged (upstream's meaning of `discovered`); a registered host whose hardware is
known skips inspecting (upstream's NeedsHardwareInspection), unless inspection is asked for."""

from __future__ import annotations

from typing import Any

import pytest

from baremetalhost.test_state_machine_table import REGISTER, Row, run_step
from metal3.controllers.baremetalhost.state_machine import OutcomeKind

pytestmark = pytest.mark.anyio

ADDRESS_ONLY = {"bmc": {"address": "ipmi://192.0.2.200", "credentialsName": ""}}
HARDWARE: dict[str, Any] = {
    "hardware": {
        "cpu": {"arch": "x86_64", "count": 2},
        "ramMebibytes": 4096,
        "systemVendor": {"serialNumber": "SN-1"},
        "firmware": {"bios": {}},
    }
}


@pytest.mark.parametrize(
    ("row", "calls", "kind", "operational"),
    [
        (
            Row(
                "none: address, no credentials",
                "",
                spec=ADDRESS_ONLY,
                registered=False,
                credentials=False,
                next_state="unmanaged",
            ),
            (),
            OutcomeKind.COMPLETE,
            "discovered",
        ),
        (
            Row(
                "unmanaged: still no credentials",
                "unmanaged",
                spec=ADDRESS_ONLY,
                registered=False,
                credentials=False,
                status={"operationalStatus": "discovered"},
                next_state="unmanaged",
            ),
            (),
            OutcomeKind.CONTINUE,
            "discovered",
        ),
        (
            Row(
                "unmanaged: credentials added",
                "unmanaged",
                registered=False,
                credentials=False,
                status={"operationalStatus": "discovered", **HARDWARE},
                next_state="registering",
            ),
            (),
            OutcomeKind.COMPLETE,
            "OK",
        ),
        (
            Row(
                "registering: hardware known -> preparing",
                "registering",
                status=HARDWARE,
                next_state="preparing",
            ),
            (REGISTER,),
            OutcomeKind.COMPLETE,
            "OK",
        ),
        (
            Row(
                "registering: hardware known, inspection asked -> inspecting",
                "registering",
                status=HARDWARE,
                annotations={"inspect.metal3.io": ""},
                next_state="inspecting",
            ),
            (REGISTER,),
            OutcomeKind.COMPLETE,
            "OK",
        ),
        (
            Row("registering: no hardware -> inspecting", "registering", next_state="inspecting"),
            (REGISTER,),
            OutcomeKind.COMPLETE,
            "OK",
        ),
    ],
    ids=lambda v: v.id if isinstance(v, Row) else None,
)
async def test_discovery_rules(
    row: Row, calls: tuple[str, ...], kind: OutcomeKind, operational: str
) -> None:
    step = await run_step(row)
    assert step.status.provisioning.state == row.next_state
    assert step.provisioner.calls == list(calls)
    assert step.outcome.kind is kind
    assert step.status.operational_status == operational
    assert not step.status.error_type
    if row.next_state == "preparing":
        assert step.status.hardware is not None and step.status.hardware.ram_mebibytes == 4096
