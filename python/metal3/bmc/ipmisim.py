"""A small IPMI BMC simulator on pyghmi's BMC server (`python -m metal3.bmc.ipmisim`).

It keeps a power state and a boot override (device, persistent and EFI flags) in memory and
answers chassis control/status, boot options and Get Device ID over RMCP+ (lanplus). pyghmi's
server needs two fixes to behave like a real BMC towards clients:

- it offers only cipher suite 3 (HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) but silently answers any
  proposal with it; here other proposals get RMCP+ status 0x11 ("no cipher suite match"), so
  clients that try SHA-256 first fall back instead of failing on a mismatched reply;
- it drops RAKP1 messages for unknown users, so clients wait until they time out; here they
  get RAKP2 status 0x0d ("unauthorized name").

With `--notify-url URL` every power change (and reset) and every boot option set is POSTed
there as JSON (`{"event", "power", "boot": {"device", "valid", "persistent", "uefi"}}`), so a
listener (the lab's hosts) acts on it at once. A sender thread posts them one at a time in
order, so the BMC answers its client without waiting for the listener; a listener that is
away is retried with backoff for a while (`NOTIFY_PATIENCE`), then that notification is
dropped with a warning. The command succeeds either way, as a BMC's does whether or not
anybody watches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyghmi.ipmi import bmc as pyghmi_bmc
from pyghmi.ipmi.private import constants as ipmi_constants
from pyghmi.ipmi.private import serversession
from pyghmi.ipmi.private import session as ipmi_session

log = logging.getLogger("metal3.bmc.ipmisim")

# RMCP+ / RAKP message status codes (IPMI v2.0, table 13-15)
STATUS_UNAUTHORIZED_NAME = 0x0D
STATUS_NO_CIPHER_SUITE_MATCH = 0x11
# Algorithms of cipher suite 3, the only one pyghmi's server implements
_SUITE_3 = (1, 1, 1)  # auth HMAC-SHA1, integrity HMAC-SHA1-96, confidentiality AES-CBC-128

# Chassis control directives (IPMI table 28-4)
POWER_DOWN, POWER_UP, POWER_CYCLE, HARD_RESET, PULSE_DIAG, SOFT_SHUTDOWN = range(6)
# Boot flags, parameter 5, data byte 1
BOOT_FLAGS_VALID = 0x80
BOOT_FLAGS_PERSISTENT = 0x40
BOOT_FLAGS_EFI = 0x20
# Boot device selector (data byte 2, bits 5..2) by name, for notifications
BOOT_DEVICES = {0x00: "none", 0x04: "pxe", 0x08: "disk", 0x0C: "safe", 0x10: "diag",
                0x14: "cd", 0x18: "bios", 0x3C: "floppy"}  # fmt: skip
NOTIFY_TIMEOUT = 5.0  # seconds per attempt to deliver a notification
NOTIFY_PATIENCE = 60.0  # seconds a notification is retried before it is dropped


class SimSession(serversession.ServerSession):  # type: ignore[misc]
    """A server-side RMCP+ session that rejects what it cannot do with proper status codes."""

    def create_open_session_response(self, request: Any) -> bytearray:
        data = bytearray(request)
        proposed = (data[12] & 0x3F, data[20] & 0x3F, data[28] & 0x3F) if len(data) >= 32 else ()
        if proposed != _SUITE_3:
            self.clientsessionid = data[4:8]
            log.info("open session: rejected cipher proposal %s", proposed)
            return bytearray([data[0], STATUS_NO_CIPHER_SUITE_MATCH, 0, 0]) + self.clientsessionid
        response: bytearray = super().create_open_session_response(request)
        return response

    def _got_rakp1(self, data: Any) -> None:
        name_length = data[27]
        name = bytes(data[28 : 28 + name_length])
        if name_length == 0 or self.authdata.get(name.decode("utf-8", "replace")) is None:
            log.info("RAKP1: unknown user, answering 'unauthorized name'")
            reply = bytearray([data[0], STATUS_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid
            self.send_payload(reply, ipmi_constants.payload_types["rakp2"], retry=False)
            return
        super()._got_rakp1(data)

    def sessionless_data(self, data: Any, sockaddr: Any) -> None:
        """A packet pyghmi queued for this session that it processes after the session has
        gone (expired, or the client started another): pyghmi hands it over as sessionless
        data, which only the BMC handles (without this the simulator died with an
        AttributeError, seen with 50 hosts under load): pass it on."""
        self.bmc.sessionless_data(data, sockaddr)


class SimulatedBMC(pyghmi_bmc.Bmc):  # type: ignore[misc]
    """Power and boot-override state of one simulated server."""

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        address: str,
        port: int,
        ignore_soft_off: bool = False,
        lose_power_requests: Collection[int] = (),
        notify_url: str | None = None,
    ) -> None:
        super().__init__(dict(users), port=port, address=address)
        self.ignore_soft_off = ignore_soft_off
        #: numbers (from 1) of the power on/off requests to acknowledge and then do nothing
        #: with, as a BMC that loses a request does
        self.lose_power_requests = frozenset(lose_power_requests)
        self.power_requests = 0
        self.notify_url = notify_url
        self._outbox: queue.Queue[bytes] = queue.Queue()
        if notify_url is not None:
            threading.Thread(target=self._send_notifications, name="notify", daemon=True).start()
        self.deviceid = 0x20
        self.revision = 1
        self.firmwaremajor = 2
        self.firmwareminor = 0x05
        self.mfgid = 0  # IANA "reserved": this is a simulator, not anybody's product
        self.prodid = 0x4D33
        self.lock = threading.Lock()
        self.power = "off"
        self.boot_flags = 0  # data byte 1 of boot flags (valid, persistent, EFI)
        self.boot_device = 0  # data byte 2 (device selector in bits 5..2)
        self.power_changes = 0

    # -- session setup -------------------------------------------------------------------------

    def sessionless_data(self, data: Any, sockaddr: Any) -> None:
        raw = bytearray(data)
        is_open_request = (
            len(raw) >= 22
            and raw[0] == 6
            and raw[2:4] == b"\xff\x07"
            and raw[4] == 6  # RMCP+ (IPMI 2.0) session header
            and raw[5] == ipmi_constants.payload_types["rmcpplusopenreq"]
        )
        if is_open_request:
            SimSession(
                self.authdata, self.kg, sockaddr, self.serversocket, raw[16:], self.uuid, bmc=self
            )
            return
        super().sessionless_data(data, sockaddr)

    def send_device_id(self, session: Any) -> None:
        # pyghmi packs the manufacturer and product ids as 4 bytes each; the reply has 3 and 2.
        response = [
            self.deviceid,
            self.revision,
            self.firmwaremajor & 0x7F,
            self.firmwareminor,
            self.ipmiversion,
            self.additionaldevices,
            *self.mfgid.to_bytes(3, "little"),
            *self.prodid.to_bytes(2, "little"),
        ]
        session.send_ipmi_response(data=response)

    # -- power ---------------------------------------------------------------------------------

    def get_power_state(self) -> str:
        return self.power

    # -- notifications -------------------------------------------------------------------------

    def state(self, event: str) -> dict[str, Any]:
        """What a notification says: the event, the power state and the boot override."""
        with self.lock:
            flags, device = self.boot_flags, self.boot_device
            power = self.power
        return {
            "event": event,
            "power": power,
            "boot": {
                "device": BOOT_DEVICES.get(device, f"0x{device:02x}"),
                "valid": bool(flags & BOOT_FLAGS_VALID),
                "persistent": bool(flags & BOOT_FLAGS_PERSISTENT),
                "uefi": bool(flags & BOOT_FLAGS_EFI),
            },
        }

    def notify(self, event: str) -> None:
        """Queue the state for the notification URL, if any (sent in order by a thread)."""
        if self.notify_url is not None:
            self._outbox.put(json.dumps(self.state(event)).encode())

    def _send_notifications(self) -> None:
        assert self.notify_url is not None
        while True:
            body = self._outbox.get()
            deadline = time.monotonic() + NOTIFY_PATIENCE
            delay = 0.05
            while True:
                try:
                    self._post(body)
                    break
                except (urllib.error.URLError, OSError) as exc:
                    if time.monotonic() + delay > deadline:
                        log.warning("notification to %s dropped: %s", self.notify_url, exc)
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

    def _post(self, body: bytes) -> None:
        assert self.notify_url is not None
        request = urllib.request.Request(
            self.notify_url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        # The listener is local (the lab): never through a proxy from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=NOTIFY_TIMEOUT) as response:
            response.read()

    # -- power (continued) ---------------------------------------------------------------------

    def _set_power(self, state: str) -> int:
        with self.lock:
            changed = self.power != state
            if changed:
                self.power_changes += 1
            self.power = state
        log.info("power %s", state)
        if changed:
            self.notify(f"power-{state}")
        return 0

    def _lost(self, request: str) -> bool:
        with self.lock:
            self.power_requests += 1
            number = self.power_requests
        if number in self.lose_power_requests:
            log.info("power request %d (%s) acknowledged and lost, as asked", number, request)
            return True
        return False

    def power_on(self) -> int:
        return 0 if self._lost("on") else self._set_power("on")

    def power_off(self) -> int:
        return 0 if self._lost("off") else self._set_power("off")

    def power_shutdown(self) -> int:
        if self._lost("soft off"):
            return 0
        # The simulated OS shuts down at once, or (like a hung OS) ignores the ACPI request.
        if self.ignore_soft_off:
            log.info("soft off requested and ignored")
            return 0
        return self._set_power("off")

    def power_reset(self) -> int:
        with self.lock:
            if self.power == "off":
                return 0xD5  # "command not supported in present state": reset needs power on
            self.power_changes += 1
        self.notify("reset")
        return 0

    def power_cycle(self) -> int:
        return self.power_reset()

    def pulse_diag(self) -> int:
        return 0

    def cold_reset(self) -> int:
        return 0

    def is_active(self) -> bool:
        return self.power == "on"

    # -- boot options --------------------------------------------------------------------------

    def get_system_boot_options(self, request: Any, session: Any) -> None:
        if request["data"][0] & 0x7F != 5:
            session.send_ipmi_response(code=0x80)  # parameter not supported
            return
        with self.lock:
            flags, device = self.boot_flags, self.boot_device
        session.send_ipmi_response(data=[1, 5, flags, device, 0, 0, 0])

    def set_system_boot_options(self, request: Any, session: Any) -> None:
        data = request["data"]
        selector = data[0] & 0x7F
        if selector in (0, 3, 4):
            session.send_ipmi_response()  # set-in-progress, info ack: accepted, no state
            return
        if selector != 5 or len(data) < 3:
            session.send_ipmi_response(code=0x80)
            return
        with self.lock:
            self.boot_flags = data[1] & (BOOT_FLAGS_VALID | BOOT_FLAGS_PERSISTENT | BOOT_FLAGS_EFI)
            self.boot_device = data[2] & 0b00111100
        log.info("boot flags 0x%02x device 0x%02x", self.boot_flags, self.boot_device)
        self.notify("boot-options")
        session.send_ipmi_response()


def read_users(path: Path) -> dict[str, str]:
    """`user<TAB>password` per line."""
    users = {}
    for line in path.read_text().splitlines():
        if line.strip():
            user, _, password = line.partition("\t")
            users[user] = password
    return users


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metal3.bmc.ipmisim", description="A simulated IPMI BMC (RMCP+, UDP)."
    )
    parser.add_argument("--address", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=623)
    parser.add_argument("--user", help="user name (with --password or --password-file)")
    parser.add_argument("--password", help="password (visible in the process list: tests only)")
    parser.add_argument("--password-file", type=Path, help="file holding the password")
    parser.add_argument("--users-file", type=Path, help="user<TAB>password per line")
    parser.add_argument("--ready-file", type=Path, help="created once the socket is bound")
    parser.add_argument(
        "--ignore-soft-off", action="store_true", help="accept soft off but stay on (a hung OS)"
    )
    parser.add_argument(
        "--lose-power-requests",
        default="",
        metavar="N,N",
        help="numbers (from 1) of power on/off requests to acknowledge and ignore (tests)",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the process that started this one goes away (tests)",
    )
    parser.add_argument(
        "--notify-url",
        help="POST the power state and boot override (JSON) here after every change",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s ipmisim %(message)s",
    )
    users: dict[str, str] = read_users(args.users_file) if args.users_file else {}
    if args.user:
        if args.password_file is not None:
            password = args.password_file.read_text().rstrip("\n")
        elif args.password is not None:
            password = args.password
        else:
            parser.error("--user needs --password or --password-file")
        users[args.user] = password
    if not users:
        parser.error("give --user (with a password) or --users-file")
    server = SimulatedBMC(
        users,
        address=args.address,
        port=args.port,
        ignore_soft_off=args.ignore_soft_off,
        lose_power_requests=[int(n) for n in args.lose_power_requests.split(",") if n],
        notify_url=args.notify_url,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.ready_file is not None:
        args.ready_file.touch()
    print(f"ipmisim listening on {args.address}:{server.port} (udp)", flush=True)
    parent = os.getppid()
    with contextlib.suppress(KeyboardInterrupt):
        while not (args.exit_with_parent and os.getppid() != parent):
            ipmi_session.Session.wait_for_rsp(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
