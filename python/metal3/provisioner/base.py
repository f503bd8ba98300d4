"""The interface the BareMetalHost state machine drives.

A provisioner does the hardware work of each lifecycle step for one host: register (check the
BMC and credentials), inspect, prepare (RAID, cleaning), provision (write the image), deprovision,
power, detach, delete. Each call is *idempotent and non-blocking*: it starts the operation or
reports on the one in progress, and the state machine calls again until the result is no longer
``dirty``. That keeps reconciles short and lets an operator restart at any moment: the next call
picks up where the hardware is.

The contract with the state machine around every call: a call returns a :class:`Result`; an
exception it raises is not lost either, the state machine records it as the host's error (type
of the step, message naming the operation and the exception) and writes the status, as for a
failed Result. A provisioner should still turn the failures it expects into Results with
messages people can act on: the exception path is for the ones it did not foresee.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.abc import TaskStatus

from metal3.api.baremetalhost import (
    BareMetalHost,
    CustomDeploy,
    FirmwareConfig,
    Image,
    RAIDConfig,
    RootDeviceHints,
)
from metal3.api.hardware import HardwareDetails

if TYPE_CHECKING:
    from metal3.kube.client import KubeClient


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
    """The settings preparing must apply (the spec's: target) and those applied by the last
    preparation (the status's: current).

    Why both: real hardware keeps what was done to it. Rebuilding RAID or changing BIOS
    settings takes long and can destroy data, so a provisioner must be able to tell a change
    from a setting that is already in place (as upstream's PrepareData carries target and
    actual RAID and firmware settings); the fixture never needed it.
    """

    raid: RAIDConfig | None
    root_device_hints: RootDeviceHints | None
    firmware: FirmwareConfig | None
    automated_cleaning: bool
    current_raid: RAIDConfig | None = None
    current_root_device_hints: RootDeviceHints | None = None
    current_firmware: FirmwareConfig | None = None


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

    @property
    def provisioning_id(self) -> str | None:
        """The provisioner's stable identifier of the host (`status.provisioning.ID`), or None
        when it has none of its own (the recorded ID is then left as it is).

        Why: the hardware side of a host (BMC sessions, the agent's record, logs) must be
        found again after an operator restart and must never be confused with a host that
        was deleted and re-created under the same name; upstream records its Ironic node's
        UUID here. Set after each successful registration.
        """
        ...

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

    async def detach(self, *, force: bool) -> Result:
        """Stop managing the host, leaving it running as it is.

        ``force`` (the detached annotation's ``force``): detach even while an operation is in
        progress, abandoning it. Why: on real hardware an operation in flight (a power change
        the BMC has not applied, an agent at work) would go on without anyone watching, so a
        plain detach waits for it; the user can say not to.
        """
        ...

    async def delete(self) -> Result:
        """Forget the host entirely."""
        ...


@dataclass(frozen=True)
class ProvisionerServices:
    """What the operator gives its provisioners when it starts."""

    client: KubeClient
    #: reconcile the host (namespace, name) soon: for work that finished in the background
    wake: Callable[[str, str], None]
    #: this operator serves the agent API (`metal3.agentapi`) the hosts' agents call back
    agent_api: bool = False


class ProvisionerFactory(Protocol):
    """Makes the provisioner for a host (cheap: called on every reconcile).

    Beyond `for_host`, two lifecycle calls, because real hardware holds resources per host
    that outlive a reconcile: BMC sessions (a Redfish session is a slot on the BMC, which
    has few), IPMI worker processes, background BMC calls and timers. `run` serves the
    background work for the operator's lifetime and frees everything when it ends; `forget`
    frees one host's share when the host goes away (deleted, or its finalizer released).
    """

    def for_host(self, host: BareMetalHost) -> Provisioner: ...

    def forget(self, uid: str) -> None:
        """The host with this uid is gone: close its sessions, stop its background work."""
        ...

    async def run(
        self,
        services: ProvisionerServices,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve background work until cancelled (started once the services are usable),
        then release every session and worker."""
        ...
