"""Redfish driver on `sushy`, run in worker threads.

sushy is blocking, so every call goes to a worker thread through anyio (bounded by a capacity
limiter shared by all BMCs; anyio's default thread limiter unless one is given) and calls on one
BMC are serialised (sushy's resource objects are not safe to refresh concurrently). Requests
have connect and read timeouts, each call has an overall deadline (a BMC that trickles bytes
never trips a read timeout), and sushy's own retry loop is cut to a single attempt so a dead
BMC fails fast; power changes are polled to the requested state with a deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import requests
import sushy
from sushy import connector as sushy_connector
from sushy import exceptions as sushy_exc

from metal3.bmc.address import BMCAddress, Driver
from metal3.bmc.credentials import Credentials
from metal3.bmc.errors import (
    BMCAddressError,
    BMCAuthError,
    BMCCertificateError,
    BMCError,
    BMCRefusedError,
    BMCServerError,
    BMCTimeoutError,
    BMCUnreachableError,
    BMCUnsupportedError,
    redact,
)
from metal3.bmc.interface import (
    BMC,
    BootDevice,
    BootSettings,
    CPUInfo,
    DriveInfo,
    Inventory,
    MediaState,
    NICInfo,
    PowerAction,
    PowerState,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_BOOT_TARGETS = {
    BootDevice.PXE: sushy.BootSource.PXE,
    BootDevice.CD: sushy.BootSource.CD,
    BootDevice.DISK: sushy.BootSource.HDD,
}
_BOOT_DEVICES = {value: key for key, value in _BOOT_TARGETS.items()}
_RESET_TYPES = {
    PowerAction.ON: sushy.ResetType.ON,
    PowerAction.SOFT_OFF: sushy.ResetType.GRACEFUL_SHUTDOWN,
    PowerAction.HARD_OFF: sushy.ResetType.FORCE_OFF,
    PowerAction.RESET: sushy.ResetType.FORCE_RESTART,
}
_POWER_STATES = {
    sushy.PowerState.ON: PowerState.ON,
    sushy.PowerState.OFF: PowerState.OFF,
    sushy.PowerState.POWERING_ON: PowerState.CHANGING,
    sushy.PowerState.POWERING_OFF: PowerState.CHANGING,
    sushy.PowerState.PAUSED: PowerState.ON,
}
_CD_TYPES = {sushy.VirtualMediaType.CD, sushy.VirtualMediaType.DVD}


class RedfishBMC(BMC):
    """A Redfish system, reached through sushy."""

    def __init__(
        self,
        address: BMCAddress,
        credentials: Credentials,
        *,
        verify: bool | str = True,
        limiter: anyio.CapacityLimiter | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        poll_interval: float = 0.25,
        call_timeout: float = 120.0,
    ) -> None:
        if address.driver is not Driver.REDFISH:
            raise BMCAddressError(str(address), "not a Redfish address")
        super().__init__(address)
        self._credentials = credentials
        self._verify = verify
        self._limiter = limiter
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._poll_interval = poll_interval
        self._call_timeout = call_timeout
        self._lock: anyio.Lock | None = None
        self._root: Any = None
        self._system: Any = None

    # -- plumbing ------------------------------------------------------------------------------

    def _connect(self) -> Any:
        """Open the sushy root and system (in a worker thread); cached until aclose()."""
        if self._system is not None:
            return self._system
        connector = sushy_connector.Connector(
            self.address.endpoint,
            verify=self._verify,
            # sushy retries connection errors max(retries, 3) times with a delay: one is enough.
            server_side_retries=1,
            server_side_retries_delay=0.5,
            default_request_timeout=self._read_timeout,
            connect_timeout=self._connect_timeout,
        )
        try:
            root = sushy.Sushy(
                self.address.endpoint,
                username=self._credentials.username,
                password=self._credentials.password,
                verify=self._verify,
                connector=connector,
            )
            system = root.get_system(self.address.system_id)
        except BaseException:
            connector.close()
            raise
        self._root, self._system = root, system
        return system

    async def _call(self, func: Callable[[], T]) -> T:
        """Run `func` in a worker thread, serialised per BMC, with errors mapped."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            try:
                with anyio.fail_after(self._call_timeout):
                    return await anyio.to_thread.run_sync(
                        func, abandon_on_cancel=True, limiter=self._limiter
                    )
            except TimeoutError:
                # The thread is abandoned (it ends on its socket timeouts) with the objects it
                # holds; the next call starts from a fresh connection.
                self._root = self._system = None
                raise BMCTimeoutError(
                    str(self.address), f"no complete answer within {self._call_timeout:g}s"
                ) from None
            except BMCError:
                raise
            except Exception as exc:
                raise self._map_error(exc) from None

    def _map_error(self, exc: Exception) -> BMCError:
        where = str(self.address)
        text = redact(str(exc), [self._credentials.password])
        if isinstance(exc, sushy_exc.AccessError):
            return BMCAuthError(where, f"the BMC rejected the credentials (HTTP {exc.status_code})")
        if isinstance(exc, sushy_exc.ConnectionError):
            cause = exc.__context__
            self._drop_connection()
            if isinstance(cause, requests.exceptions.SSLError):
                return BMCCertificateError(
                    where,
                    "TLS certificate verification failed (use a trusted CA or set "
                    "disableCertificateVerification)",
                )
            if isinstance(cause, requests.exceptions.Timeout):
                return BMCTimeoutError(where, "the BMC did not answer in time")
            return BMCUnreachableError(where, f"cannot reach the BMC: {_short(cause, text)}")
        if isinstance(exc, sushy_exc.ResourceNotFoundError):
            return BMCRefusedError(where, f"not found on the BMC: {text}")
        if isinstance(exc, sushy_exc.UnknownDefaultError):
            return BMCRefusedError(
                where, "the BMC has several systems: put the system path in the address"
            )
        if isinstance(exc, sushy_exc.HTTPError):
            if exc.status_code == 501:
                return BMCUnsupportedError(where, f"not implemented by the BMC: {text}")
            if (exc.status_code or 0) >= 500:
                return BMCServerError(where, text)
            return BMCRefusedError(where, text)
        if isinstance(
            exc,
            sushy_exc.MissingAttributeError
            | sushy_exc.MissingActionError
            | sushy_exc.InvalidParameterValueError,
        ):
            return BMCUnsupportedError(where, text)
        if isinstance(exc, sushy_exc.SushyError):
            return BMCRefusedError(where, text)
        return BMCError(where, f"unexpected {type(exc).__name__}: {text}")

    def _drop_connection(self) -> None:
        """Forget a broken connection (no network traffic: safe on the event loop)."""
        root, self._root, self._system = self._root, None, None
        if root is not None:
            _close(root, logout=False)

    async def aclose(self) -> None:
        """Log out of the Redfish session, if sushy opened one, and close the connection."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            root, self._root, self._system = self._root, None, None
            if root is not None:
                with anyio.move_on_after(self._read_timeout):
                    await anyio.to_thread.run_sync(
                        _close, root, True, abandon_on_cancel=True, limiter=self._limiter
                    )

    # -- connection and power ------------------------------------------------------------------

    async def validate(self) -> None:
        def check() -> None:
            system = self._connect()
            system.refresh(force=True)

        await self._call(check)

    def _read_power(self) -> PowerState:
        system = self._connect()
        system.refresh(force=True)
        return _POWER_STATES.get(system.power_state, PowerState.UNKNOWN)

    async def power_state(self) -> PowerState:
        return await self._call(self._read_power)

    def _reset(self, reset: Any) -> Callable[[], None]:
        def call() -> None:
            system = self._connect()
            allowed = system.get_allowed_reset_system_values()
            if allowed and reset not in allowed:
                raise BMCUnsupportedError(
                    str(self.address), f"the BMC does not offer reset type {reset.value}"
                )
            system.reset_system(reset)

        return call

    async def _send_power(self, action: PowerAction) -> None:
        await self._call(self._reset(_RESET_TYPES[action]))

    # -- boot ----------------------------------------------------------------------------------

    async def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, uefi: bool | None = None
    ) -> None:
        enabled = (
            sushy.BootSourceOverrideEnabled.CONTINUOUS
            if persistent
            else sushy.BootSourceOverrideEnabled.ONCE
        )
        mode = None
        if uefi is not None:
            mode = (
                sushy.BootSourceOverrideMode.UEFI if uefi else sushy.BootSourceOverrideMode.LEGACY
            )

        def call() -> None:
            self._connect().set_system_boot_options(
                target=_BOOT_TARGETS[device], enabled=enabled, mode=mode
            )

        await self._call(call)

    async def boot_settings(self) -> BootSettings:
        def call() -> BootSettings:
            system = self._connect()
            system.refresh(force=True)
            boot = system.boot
            mode = boot.mode
            return BootSettings(
                device=_BOOT_DEVICES.get(boot.target),
                persistent=boot.enabled == sushy.BootSourceOverrideEnabled.CONTINUOUS,
                uefi=None if mode is None else mode == sushy.BootSourceOverrideMode.UEFI,
            )

        return await self._call(call)

    # -- virtual media -------------------------------------------------------------------------

    def _cd_device(self) -> Any:
        system = self._connect()
        try:
            collections = [system.virtual_media]
        except sushy_exc.MissingAttributeError:
            collections = [m.virtual_media for m in system.managers]
        for collection in collections:
            for device in collection.get_members():
                if _CD_TYPES & set(device.media_types or ()):
                    return device
        raise BMCUnsupportedError(str(self.address), "the BMC has no virtual CD/DVD drive")

    async def insert_media(self, url: str) -> None:
        def call() -> None:
            device = self._cd_device()
            if device.inserted:
                device.eject_media()
            device.insert_media(url, inserted=True, write_protected=True)

        await self._call(call)

    async def eject_media(self) -> None:
        def call() -> None:
            device = self._cd_device()
            if device.inserted:
                device.eject_media()

        await self._call(call)

    async def media_state(self) -> MediaState:
        def call() -> MediaState:
            device = self._cd_device()
            device.refresh(force=True)
            return MediaState(inserted=bool(device.inserted), image=device.image or None)

        return await self._call(call)

    # -- inventory, BIOS, health ---------------------------------------------------------------

    async def inventory(self) -> Inventory:
        def call() -> Inventory:
            system = self._connect()
            system.refresh(force=True)
            memory = system.memory_summary
            size_gib = getattr(memory, "size_gib", None) if memory is not None else None
            status = system.status
            return Inventory(
                manufacturer=system.manufacturer or None,
                model=system.model or None,
                serial_number=system.serial_number or None,
                bios_version=system.bios_version or None,
                cpu=_optional(lambda: _cpu(system), CPUInfo()),
                memory_mib=None if size_gib is None else round(float(size_gib) * 1024),
                nics=_optional(lambda: _nics(system), ()),
                drives=_optional(lambda: _drives(system), ()),
                health=_health(status),
            )

        return await self._call(call)

    async def bios_attributes(self) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            bios = self._connect().bios
            bios.refresh(force=True)
            return dict(bios.attributes)

        return await self._call(call)

    async def set_bios_attributes(self, attributes: dict[str, Any]) -> None:
        def call() -> None:
            self._connect().bios.set_attributes(dict(attributes))

        await self._call(call)

    async def health(self) -> str:
        def call() -> str:
            system = self._connect()
            system.refresh(force=True)
            return _health(system.status) or "unknown"

        return await self._call(call)


def _close(root: Any, logout: bool) -> None:
    """Close a sushy root: delete its session (a request) when asked, then its sockets."""
    try:
        if logout and getattr(root, "_auth", None) is not None:
            root._auth.close()
            root._auth = None
        root._conn.close()
    except Exception:  # best effort: the connection may already be broken
        log.debug("closing the Redfish connection failed", exc_info=True)


def _short(cause: BaseException | None, fallback: str) -> str:
    if cause is None:
        return fallback
    text = str(cause)
    if "Connection refused" in text:
        return "connection refused (nothing listening?)"
    return type(cause).__name__


def _optional(read: Callable[[], T], default: T) -> T:
    """Inventory parts a BMC may lack (404/501/missing link) come back empty, not as errors."""
    try:
        return read()
    except (sushy_exc.MissingAttributeError, sushy_exc.ResourceNotFoundError):
        return default
    except sushy_exc.HTTPError as exc:
        if exc.status_code in (404, 501):
            return default
        raise


def _health(status: Any) -> str | None:
    health = getattr(status, "health", None)
    return None if health is None else str(getattr(health, "value", health))


def _cpu(system: Any) -> CPUInfo:
    processors = system.processors
    members = processors.get_members()
    summary = processors.summary
    arch = summary.architecture
    first = next((p for p in members if p.model), None)
    speeds = [p.max_speed_mhz for p in members if p.max_speed_mhz]
    return CPUInfo(
        count=summary.count or None,
        model=first.model if first is not None else None,
        arch=None if arch is None else str(getattr(arch, "value", arch)),
        max_speed_mhz=float(max(speeds)) if speeds else None,
    )


def _nics(system: Any) -> tuple[NICInfo, ...]:
    return tuple(
        NICInfo(
            name=nic.identity,
            mac=nic.mac_address.lower() if nic.mac_address else None,
            speed_mbps=nic.speed_mbps,
        )
        for nic in system.ethernet_interfaces.get_members()
    )


def _drives(system: Any) -> tuple[DriveInfo, ...]:
    """Drives from Storage; from SimpleStorage when the BMC has no Storage resource."""
    try:
        storages = system.storage.get_members()
    except (sushy_exc.MissingAttributeError, sushy_exc.ResourceNotFoundError):
        return _simple_storage_drives(system)
    except sushy_exc.HTTPError as exc:
        if exc.status_code != 501:
            raise
        return _simple_storage_drives(system)
    found: list[DriveInfo] = []
    for storage in storages:
        for identity in storage.drives_identities or ():
            try:
                drive = storage.get_drive(identity)
            except sushy_exc.ResourceNotFoundError:
                log.info("drive %s listed but not found; skipped", identity)
                continue
            media = drive.media_type
            found.append(
                DriveInfo(
                    name=drive.name or drive.identity,
                    size_bytes=drive.capacity_bytes,
                    model=drive.model or None,
                    vendor=drive.manufacturer or None,
                    serial_number=drive.serial_number or None,
                    rotational=None if media is None else str(media).upper() == "HDD",
                )
            )
    return tuple(found)


def _simple_storage_drives(system: Any) -> tuple[DriveInfo, ...]:
    found = []
    for controller in system.simple_storage.get_members():
        for device in controller.devices or ():
            state = getattr(getattr(device, "status", None), "state", None)
            if state is not None and str(getattr(state, "value", state)) == "Absent":
                continue
            found.append(
                DriveInfo(name=device.name, size_bytes=device.capacity_bytes, model=device.model)
            )
    return tuple(found)
