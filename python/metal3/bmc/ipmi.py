"""IPMI driver on pyghmi's blocking client, kept off the event loop with hard deadlines.

pyghmi's pitfalls and what this module does about them:

- it blocks, can stall, and its threads share sessions and a login table that a failing login
  to a dead BMC can leave broken (later logins then hang): every call runs in a worker
  *process* (`metal3.bmc.ipmiworkers`), driven from a worker thread under anyio's limiter,
  with a deadline; a worker that misses it is killed, so one dead BMC costs its caller the
  deadline and never blocks the others;
- concurrent use of one BMC's session can hang: calls to one BMC are serialised by a per-BMC
  lock (taken in the worker thread, bounded by the same deadline);
- a second client to the same BMC hangs when credentials are `str`: they are passed as bytes,
  which also lets pyghmi reuse its logged-in session inside a worker;
- it proposes cipher suite 17 (SHA-256) first and crashes on BMCs that accept it but answer
  RAKP with SHA-1 (virtualbmc, some real ones): such a login is asked again with suite 3
  (SHA-1) only, and the suite a BMC logged in with is remembered per BMC for the process, so
  later sessions go straight to it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio

from metal3.bmc.address import BMCAddress, Driver
from metal3.bmc.credentials import Credentials
from metal3.bmc.errors import (
    BMCAddressError,
    BMCAuthError,
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
    DeviceID,
    PowerAction,
    PowerState,
)
from metal3.bmc.ipmiworkers import (
    SUITE_SHA1,
    SUITE_SHA256,
    IPMIRequest,
    WorkerFailure,
    WorkerPool,
    WorkerTimeout,
    default_pool,
)

log = logging.getLogger(__name__)

PRIVILEGE_NUMBERS = {"CALLBACK": 1, "USER": 2, "OPERATOR": 3, "ADMINISTRATOR": 4, "OEM": 5}
_BOOT_NAMES = {BootDevice.PXE: "network", BootDevice.CD: "optical", BootDevice.DISK: "hd"}
# pyghmi's set_power names for each action.
_POWER_ACTIONS = {
    PowerAction.ON: "on",
    PowerAction.SOFT_OFF: "softoff",
    PowerAction.HARD_OFF: "off",
    PowerAction.RESET: "reset",
}
_BOOT_DEVICES = {"network": BootDevice.PXE, "optical": BootDevice.CD, "hd": BootDevice.DISK}
# Completion codes of a BMC that could not do it now (node busy, timeout while processing,
# response could not be provided): worth trying again, as an HTTP 5xx.
_BUSY_CODES = (0xC0, 0xC3, 0xCE)

# One lock per BMC (host, port), shared by every driver object in the process.
_locks_guard = threading.Lock()
_locks: dict[tuple[str, int], threading.Lock] = {}


def _bmc_lock(key: tuple[str, int]) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = threading.Lock()
        return lock


# The cipher suite each BMC (host, port) last logged in with; read and written under its lock.
_suites: dict[tuple[str, int], int] = {}
_SUITE_NAMES = {SUITE_SHA256: "SHA-256", SUITE_SHA1: "SHA-1"}


def known_cipher_suite(host: str, port: int) -> int | None:
    """The cipher suite this process last logged in to the BMC at (host, port) with, if any."""
    return _suites.get((host, port))


def _remember_suite(key: tuple[str, int], suite: int, fell_back: bool) -> None:
    """Record the suite a BMC logged in with; log it the first time and whenever it changes."""
    if suite == 0 or _suites.get(key) == suite:
        return
    _suites[key] = suite
    host, port = key
    why = " (its RAKP failed with suite 17, SHA-256)" if fell_back else ""
    log.info(
        "IPMI BMC %s port %d: using cipher suite %d (%s)%s",
        host,
        port,
        suite,
        _SUITE_NAMES.get(suite, "?"),
        why,
    )


class IPMIBMC(BMC):
    """One IPMI BMC over RMCP+ (lanplus)."""

    def __init__(
        self,
        address: BMCAddress,
        credentials: Credentials,
        *,
        limiter: anyio.CapacityLimiter | None = None,
        call_timeout: float = 20.0,
        poll_interval: float = 0.25,
        pool: WorkerPool | None = None,
    ) -> None:
        if address.driver is not Driver.IPMI:
            raise BMCAddressError(str(address), "not an IPMI address")
        super().__init__(address)
        self._user = credentials.username.encode("utf-8")
        self._password = credentials.password.encode("utf-8")
        self._limiter = limiter
        self._call_timeout = call_timeout
        self._poll_interval = poll_interval
        self._pool = pool
        self._key = (address.host, address.ipmi_port)
        self._privilege = PRIVILEGE_NUMBERS[address.privilege_level or "ADMINISTRATOR"]

    # -- plumbing ------------------------------------------------------------------------------

    def _run(self, operation: str, args: tuple[Any, ...], deadline: float) -> Any:
        """In a worker thread: take the BMC's lock, then have a worker process do the call."""
        lock = _bmc_lock(self._key)
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise WorkerTimeout("an earlier call to this BMC is still running")
        try:
            pool = self._pool or default_pool()
            known = _suites.get(self._key)
            suite = SUITE_SHA1 if known == SUITE_SHA1 else SUITE_SHA256
            fell_back = False
            try:
                reply = pool.call(self._request(operation, args, suite), deadline)
            except WorkerFailure as exc:
                if exc.kind != "cipher":
                    raise
                # Its failure, if any, is the one reported (a wrong password, say).
                reply = pool.call(self._request(operation, args, SUITE_SHA1), deadline)
                fell_back = True
            _remember_suite(self._key, reply.cipher_suite, fell_back)
            return reply.value
        finally:
            lock.release()

    def _request(self, operation: str, args: tuple[Any, ...], suite: int) -> IPMIRequest:
        return IPMIRequest(
            host=self.address.host,
            port=self.address.ipmi_port,
            user=self._user,
            password=self._password,
            privilege=self._privilege,
            operation=operation,
            args=args,
            cipher_suite=suite,
        )

    async def _call(self, operation: str, *args: Any) -> Any:
        deadline = time.monotonic() + self._call_timeout
        try:
            return await anyio.to_thread.run_sync(
                self._run, operation, args, deadline, abandon_on_cancel=True, limiter=self._limiter
            )
        except WorkerTimeout:
            raise BMCTimeoutError(
                str(self.address), f"no answer from the BMC within {self._call_timeout:g}s"
            ) from None
        except WorkerFailure as exc:
            raise self._map_error(exc) from None
        except OSError as exc:  # the worker process could not be started or died
            raise BMCError(str(self.address), f"IPMI worker failed: {exc}") from None

    def _map_error(self, exc: WorkerFailure) -> BMCError:
        where = str(self.address)
        text = redact(exc.message, [self._password, self._user])
        lowered = text.lower()
        if exc.kind == "ipmi":
            if "password" in lowered or "unauthorized name" in lowered or "rakp" in lowered:
                return BMCAuthError(where, f"the BMC rejected the credentials ({text})")
            if "timeout" in lowered or "timed out" in lowered:
                return BMCTimeoutError(where, "the BMC did not answer in time")
            if "unable to transmit" in lowered or "no longer connected" in lowered:
                return BMCUnreachableError(where, f"cannot reach the BMC: {text}")
            if exc.code in (0xC1, 0xC9, 0xCC, 0x80):
                return BMCUnsupportedError(where, f"the BMC does not support this: {text}")
            if exc.code in _BUSY_CODES:
                return BMCServerError(where, text)
            return BMCRefusedError(where, text)
        if exc.kind == "session":
            return BMCUnreachableError(where, f"cannot reach the BMC: {text}")
        if exc.kind == "invalid":
            return BMCUnsupportedError(where, text)
        if exc.kind == "os":
            return BMCUnreachableError(where, f"cannot reach the BMC: {text}")
        return BMCError(where, f"unexpected error in pyghmi: {text}")

    # -- operations ----------------------------------------------------------------------------

    async def validate(self) -> None:
        await self.device_id()

    async def device_id(self) -> DeviceID:
        # Get Device ID (netfn app, command 1)
        data: bytes = await self._call("raw", 6, 1)
        if len(data) < 11:
            raise BMCRefusedError(str(self.address), "short Get Device ID reply")
        minor = data[3]
        return DeviceID(
            device_id=data[0],
            revision=data[1] & 0x0F,
            firmware=f"{data[2] & 0x7F}.{minor >> 4}{minor & 0x0F}",
            ipmi_version=f"{data[4] & 0x0F}.{data[4] >> 4}",
            manufacturer_id=int.from_bytes(data[6:9], "little"),
            product_id=int.from_bytes(data[9:11], "little"),
        )

    async def power_state(self) -> PowerState:
        # Get Chassis Status (netfn chassis, command 1): bit 0 of byte 1 is "power is on".
        # Sent raw: pyghmi's get_power() first asks for the device id on every new client.
        data: bytes = await self._call("raw", 0, 1)
        return PowerState.ON if data[0] & 1 else PowerState.OFF

    async def _send_power(self, action: PowerAction) -> None:
        await self._call("set_power", _POWER_ACTIONS[action])

    async def set_boot_device(
        self, device: BootDevice, *, persistent: bool = False, uefi: bool | None = None
    ) -> None:
        await self._call("set_bootdev", _BOOT_NAMES[device], persistent, bool(uefi))

    async def boot_settings(self) -> BootSettings:
        reply: dict[str, Any] = await self._call("get_bootdev")
        return BootSettings(
            device=_BOOT_DEVICES.get(str(reply.get("bootdev"))),
            persistent=bool(reply.get("persistent")) and reply.get("bootdev") != "default",
            uefi=reply.get("uefimode"),
        )
