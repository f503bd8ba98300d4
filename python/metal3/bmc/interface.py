"""The typed async interface the provisioner uses for every BMC, whatever its protocol.

`BMC` is an abstract base class: drivers override what their protocol offers, and everything
else raises BMCUnsupportedError, so a caller can try an operation and get a clear answer.
Every method is a coroutine; drivers keep their blocking libraries off the event loop, bound
their concurrency and put a deadline on each call. Power comes two ways: `request_power` sends
a request and returns (poll `power_state`), `power_on`/`power_off`/`reboot` wait for the result.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio

from metal3.bmc.address import BMCAddress
from metal3.bmc.errors import BMCRefusedError, BMCTimeoutError, BMCUnsupportedError

log = logging.getLogger(__name__)


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"
    #: reported while a change is in flight (e.g. Redfish PoweringOn)
    CHANGING = "changing"
    UNKNOWN = "unknown"


class PowerAction(StrEnum):
    """What a driver is asked to do to the power; the waiting is common to all drivers."""

    ON = "on"
    SOFT_OFF = "soft-off"
    HARD_OFF = "hard-off"
    RESET = "reset"


class BootDevice(StrEnum):
    PXE = "pxe"
    CD = "cd"
    DISK = "disk"


@dataclass(frozen=True, kw_only=True)
class BootSettings:
    """The boot override a BMC reports."""

    device: BootDevice | None
    persistent: bool
    #: True for UEFI, False for legacy BIOS, None when the BMC does not say
    uefi: bool | None


@dataclass(frozen=True, kw_only=True)
class CPUInfo:
    count: int | None = None
    model: str | None = None
    arch: str | None = None
    max_speed_mhz: float | None = None


@dataclass(frozen=True, kw_only=True)
class NICInfo:
    name: str | None
    mac: str | None
    speed_mbps: int | None = None


@dataclass(frozen=True, kw_only=True)
class DriveInfo:
    name: str | None
    size_bytes: int | None
    model: str | None = None
    vendor: str | None = None
    serial_number: str | None = None
    rotational: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Inventory:
    """What the BMC says about the machine (out-of-band, before any agent runs)."""

    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None
    bios_version: str | None = None
    cpu: CPUInfo = field(default_factory=CPUInfo)
    memory_mib: int | None = None
    nics: tuple[NICInfo, ...] = ()
    drives: tuple[DriveInfo, ...] = ()
    health: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeviceID:
    """IPMI Get Device ID: who made the BMC and which firmware it runs."""

    device_id: int
    revision: int
    firmware: str
    ipmi_version: str
    manufacturer_id: int
    product_id: int


@dataclass(frozen=True, kw_only=True)
class MediaState:
    inserted: bool
    image: str | None


class BMC(abc.ABC):
    """One BMC, reached through one address with one set of credentials."""

    _poll_interval: float = 1.0  # seconds between power state reads while waiting

    def __init__(self, address: BMCAddress) -> None:
        self.address = address

    def _unsupported(self, what: str) -> BMCUnsupportedError:
        return BMCUnsupportedError(
            str(self.address), f"{what} is not supported by the {self.address.driver} driver"
        )

    @abc.abstractmethod
    async def validate(self) -> None:
        """Check reachability and credentials; raise a BMCError saying which one failed."""

    @abc.abstractmethod
    async def power_state(self) -> PowerState: ...

    @abc.abstractmethod
    async def _send_power(self, action: PowerAction) -> None:
        """Driver hook: ask the BMC for ``action``; return without waiting for its effect."""

    async def request_power(self, action: PowerAction) -> None:
        """Ask the BMC for ``action`` and return once it accepted the request, without waiting
        for the power to change: BMCs apply it seconds later, so poll :meth:`power_state` for
        the outcome. For callers that must not wait (a reconcile); power_on, power_off and
        reboot below wait until the state is reached.
        """
        await self._send_power(action)

    async def _wait_power(self, want: PowerState, limit: float) -> bool:
        """Poll until the BMC reports ``want``; False when ``limit`` seconds pass first.

        BMCs apply power changes asynchronously (seconds later, on real hardware and in the
        emulators alike), so the requested state is polled for rather than assumed.
        """
        with anyio.move_on_after(limit):
            while True:
                if await self.power_state() == want:
                    return True
                await anyio.sleep(self._poll_interval)
        return False

    def _power_timeout(self, want: PowerState, timeout: float) -> BMCTimeoutError:
        return BMCTimeoutError(
            str(self.address), f"the host did not reach power {want} within {timeout:g}s"
        )

    async def power_on(self, *, wait: float = 120.0) -> None:
        """Power on and wait (polling) until the BMC reports On."""
        if await self.power_state() == PowerState.ON:
            return
        await self._send_power(PowerAction.ON)
        if not await self._wait_power(PowerState.ON, wait):
            raise self._power_timeout(PowerState.ON, wait)

    async def power_off(self, *, soft_wait: float | None = 60.0, wait: float = 120.0) -> None:
        """Ask the OS to shut down for `soft_wait` seconds, then force off (None: hard only)."""
        if await self.power_state() == PowerState.OFF:
            return
        if soft_wait is not None and soft_wait > 0:
            try:
                await self._send_power(PowerAction.SOFT_OFF)
            except (BMCUnsupportedError, BMCRefusedError) as exc:
                log.info("%s: soft power off refused (%s), forcing", self.address, exc.message)
            else:
                if await self._wait_power(PowerState.OFF, soft_wait):
                    return
                log.info("%s: soft power off timed out, forcing", self.address)
        await self._send_power(PowerAction.HARD_OFF)
        if not await self._wait_power(PowerState.OFF, wait):
            raise self._power_timeout(PowerState.OFF, wait)

    async def reboot(self, *, wait: float = 120.0) -> None:
        """Hard reset (or power on when off) and wait until the BMC reports On."""
        if await self.power_state() == PowerState.OFF:
            await self.power_on(wait=wait)
            return
        await self._send_power(PowerAction.RESET)
        if not await self._wait_power(PowerState.ON, wait):
            raise self._power_timeout(PowerState.ON, wait)

    @abc.abstractmethod
    async def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, uefi: bool | None = None
    ) -> None: ...

    @abc.abstractmethod
    async def boot_settings(self) -> BootSettings: ...

    async def insert_media(self, url: str) -> None:
        """Insert a CD image by URL (the BMC downloads it)."""
        raise self._unsupported("virtual media")

    async def eject_media(self) -> None:
        raise self._unsupported("virtual media")

    async def media_state(self) -> MediaState:
        raise self._unsupported("virtual media")

    async def inventory(self) -> Inventory:
        raise self._unsupported("inventory")

    async def bios_attributes(self) -> dict[str, Any]:
        raise self._unsupported("BIOS settings")

    async def set_bios_attributes(self, attributes: dict[str, Any]) -> None:
        raise self._unsupported("BIOS settings")

    async def device_id(self) -> DeviceID:
        raise self._unsupported("device id")

    async def health(self) -> str:
        raise self._unsupported("health")

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Free connections; the object is not used afterwards."""

    async def __aenter__(self) -> BMC:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
