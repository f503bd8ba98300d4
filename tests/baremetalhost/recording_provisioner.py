"""A provisioner for unit tests of the state machine: it records every call and answers from a
script, so a test can say exactly what the machine asked of the hardware.

It is a test double of our own interface (:class:`metal3.provisioner.base.Provisioner`) and keeps
that interface's contract: every operation answers a :class:`Result` (complete unless scripted
otherwise); inspection returns hardware details only with a complete result; ``power_state``
reports what the completed operations left (power on/off; provisioning boots the host into its
image; deprovisioning leaves it off), or ``None`` when scripted as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus

from metal3.api.baremetalhost import BareMetalHost
from metal3.api.hardware import HardwareDetails
from metal3.provisioner.base import (
    DONE,
    InspectionResult,
    ManagementAccessData,
    PowerState,
    PrepareData,
    ProvisionData,
    Provisioner,
    ProvisionerServices,
    Result,
)

# The operations a script can answer (power_state answers from ``powered_on``).
OPERATIONS = frozenset(
    {
        "register",
        "inspect",
        "prepare",
        "adopt",
        "provision",
        "deprovision",
        "power_on",
        "power_off",
        "detach",
        "delete",
    }
)


@dataclass
class RecordingProvisioner:
    """Answers each operation with its scripted results in order (the last one repeats)."""

    script: dict[str, list[Result]] = field(default_factory=dict)
    powered_on: bool | None = False
    inventory: HardwareDetails = field(
        default_factory=lambda: HardwareDetails(hostname="recorded", ram_mebibytes=4096)
    )
    calls: list[str] = field(default_factory=list)  # e.g. "power_off(hard=True)"
    provisioning_id: str | None = None  # what status.provisioning.ID becomes on registering
    # The data argument of the latest call of each operation that takes one.
    registered_with: ManagementAccessData | None = None
    prepared_with: PrepareData | None = None
    adopted_with: ProvisionData | None = None
    provisioned_with: ProvisionData | None = None

    def __post_init__(self) -> None:
        unknown = set(self.script) - OPERATIONS
        if unknown:
            raise ValueError(f"script names unknown operations: {sorted(unknown)}")

    def _answer(self, operation: str, call: str) -> Result:
        self.calls.append(call)
        answers = self.script.get(operation)
        if not answers:
            return DONE
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async def register(self, data: ManagementAccessData, *, force: bool) -> Result:
        self.registered_with = data
        return self._answer("register", f"register(force={force})")

    async def inspect(self, *, force: bool) -> InspectionResult:
        result = self._answer("inspect", f"inspect(force={force})")
        return InspectionResult(result, self.inventory.copy() if result.complete else None)

    async def prepare(self, data: PrepareData, *, force: bool) -> Result:
        self.prepared_with = data
        return self._answer("prepare", f"prepare(force={force})")

    async def adopt(self, data: ProvisionData) -> Result:
        self.adopted_with = data
        return self._answer("adopt", "adopt")

    async def provision(self, data: ProvisionData) -> Result:
        self.provisioned_with = data
        result = self._answer("provision", "provision")
        if result.complete:
            self.powered_on = True
        return result

    async def deprovision(self, *, automated_cleaning: bool) -> Result:
        result = self._answer(
            "deprovision", f"deprovision(automated_cleaning={automated_cleaning})"
        )
        if result.complete:
            self.powered_on = False
        return result

    async def power_on(self, *, force: bool) -> Result:
        result = self._answer("power_on", f"power_on(force={force})")
        if result.complete:
            self.powered_on = True
        return result

    async def power_off(self, *, hard: bool) -> Result:
        result = self._answer("power_off", f"power_off(hard={hard})")
        if result.complete:
            self.powered_on = False
        return result

    async def power_state(self) -> PowerState:
        self.calls.append("power_state")
        return PowerState(self.powered_on)

    async def detach(self, *, force: bool) -> Result:
        return self._answer("detach", "detach(force=True)" if force else "detach")

    async def delete(self) -> Result:
        return self._answer("delete", "delete")


@dataclass
class RecordingProvisionerFactory:
    """Hands out one recording provisioner and remembers which hosts asked for one."""

    provisioner: RecordingProvisioner = field(default_factory=RecordingProvisioner)
    hosts: list[str] = field(default_factory=list)

    forgotten: list[str] = field(default_factory=list)  # uids given to forget()

    def for_host(self, host: BareMetalHost) -> Provisioner:  # typed: the double must conform
        self.hosts.append(host.metadata.name or "" if host.metadata else "")
        return self.provisioner

    def forget(self, uid: str) -> None:
        self.forgotten.append(uid)

    async def run(
        self,
        services: ProvisionerServices,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        await anyio.sleep_forever()
