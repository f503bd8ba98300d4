"""The interface the BareMetalHost state machine drives.

A provisioner does the hardware work of each lifecycle step for one host: register (check the
BMC and credentials), inspect, prepare (RAID, cleaning), provision (write the image), deprovision,
power, detach, delete. Each call is *idempotent and non-blocking*: it starts the operation or
reports on the one in progress, and the state machine calls again until the result is no longer
``dirty``. That keeps reconciles short and lets an operator restart at any moment: the next call
picks up where the hardware is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from metal3.api.baremetalhost import (
    BareMetalHost,
    CustomDeploy,
    FirmwareConfig,
    Image,
    RAIDConfig,
    RootDeviceHints,
)
from metal3.api.hardware import HardwareDetails


@dataclass(frozen=True)
class Result:
    """How a provisioner call went.

    ``dirty``: the operation is still in progress; call again after ``requeue_after`` seconds.
    ``error_message``: the operation failed (the state machine records it as the host's error).
    Neither: the operation is complete.
    """

    dirty: bool = False
    requeue_after: float = 0.0
    error_message: str = ""

    @property
    def complete(self) -> bool:
        return not self.dirty and not self.error_message


DONE = Result()


def in_progress(requeue_after: float = 0.0) -> Result:
    return Result(dirty=True, requeue_after=requeue_after)


def failed(message: str) -> Result:
    return Result(error_message=message)


@dataclass(frozen=True)
class Credentials:
    """BMC credentials from the host's Secret; ``repr`` never shows the password."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ManagementAccessData:
    address: str
    credentials: Credentials
    disable_certificate_verification: bool
    boot_mac_address: str | None
    boot_mode: str | None


@dataclass(frozen=True)
class PrepareData:
    raid: RAIDConfig | None
    root_device_hints: RootDeviceHints | None
    firmware: FirmwareConfig | None
    automated_cleaning: bool


@dataclass(frozen=True)
class ProvisionData:
    image: Image | None
    custom_deploy: CustomDeploy | None
    root_device_hints: RootDeviceHints | None
    boot_mode: str | None
    user_data: str | None = field(default=None, repr=False)
    network_data: str | None = field(default=None, repr=False)
    meta_data: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class InspectionResult:
    result: Result
    details: HardwareDetails | None = None


@dataclass(frozen=True)
class PowerState:
    powered_on: bool | None  # None: unknown (BMC not reachable)


class Provisioner(Protocol):
    """Hardware operations for one host."""

    async def register(self, data: ManagementAccessData, *, force: bool) -> Result:
        """Validate BMC access and credentials; enrol the host."""
        ...

    async def inspect(self, *, force: bool) -> InspectionResult:
        """Collect the hardware inventory; ``force`` starts a new inspection."""
        ...

    async def prepare(self, data: PrepareData, *, force: bool) -> Result:
        """Apply RAID and firmware settings and clean disks as configured."""
        ...

    async def adopt(self, data: ProvisionData) -> Result:
        """Take over a host that is already running its workload (externally provisioned)."""
        ...

    async def provision(self, data: ProvisionData) -> Result:
        """Write the image (or run the custom deploy) and boot the host into it."""
        ...

    async def deprovision(self, *, automated_cleaning: bool) -> Result:
        """Remove the workload (cleaning disks as configured)."""
        ...

    async def power_on(self, *, force: bool) -> Result: ...

    async def power_off(self, *, hard: bool) -> Result: ...

    async def power_state(self) -> PowerState: ...

    async def detach(self) -> Result:
        """Stop managing the host, leaving it running as it is."""
        ...

    async def delete(self) -> Result:
        """Forget the host entirely."""
        ...


class ProvisionerFactory(Protocol):
    """Makes the provisioner for a host (cheap: called on every reconcile)."""

    def for_host(self, host: BareMetalHost) -> Provisioner: ...
