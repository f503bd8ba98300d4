"""The lab's BMCs, all on 127.0.0.1: sushy-tools Redfish emulators (fake driver), each for up
to `SYSTEMS_PER_EMULATOR` Redfish hosts, and one of our IPMI simulators per IPMI host; and what
their reports mean.

Why more than one emulator for a large lab: an emulator is one Python process whose fake
driver runs one call at a time (`metal3.bmc.sushy_ordered`), so fifty hosts asking for a boot
at once queued behind each other in it, a cost of the emulation that a rack of real BMCs, one
per server, does not have. In the 50-host bench (4 emulators against 1), a host's deploy result
became `provisioned` in 0.33-0.40 s at the median instead of 0.89-0.98 s.

Both kinds tell the supervisor about every change at once: the emulator PUTs the whole system
to `NOTIFY/redfish` (its external notifier; every system has `external_notifier: True`), each
simulator POSTs its state to `NOTIFY/ipmi/NAME`. The fake driver applies a power change only
`power_delay` seconds after the request (sushy-tools' default is a random 1 to 11 s; the lab
sets it through the emulator's config file, see `metal3.bmc.emulators`) and only when the
system is next read (with a delay of 0, in the request itself: `metal3.bmc.sushy_ordered`): a
report carrying `pending_power` makes the lab read the system at that time
(`poll_redfish_power`: the read applies the change and brings the next report), unless a
later report already says it is applied.

The Redfish hosts share one user, the same in every emulator (the emulator has no per-system
users); each IPMI host has its own. Passwords are random per lab and never logged.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metal3.bmc.emulators import FakeDrive, FakeSystem, IPMISimulator, SushyEmulator
from metal3.lab.hosts import BmcReport

REDFISH_KINDS = ("redfish", "redfish-virtualmedia")
SYSTEMS_PER_EMULATOR = 16
KINDS = (*REDFISH_KINDS, "ipmi")
_REDFISH_BOOT = {"pxe": "pxe", "cd": "cd", "hdd": "disk", "none": "none", "uefihttp": "uefihttp"}


@dataclass(frozen=True)
class BmcPlan:
    """One host's BMC: which kind, its system identity and what the emulator reports."""

    name: str
    kind: str
    system_uuid: str
    username: str
    password: str
    nics: tuple[tuple[str, str], ...]  # (mac, ip)
    drives: tuple[FakeDrive, ...]
    power_on: bool = False
    boot_device: str | None = None  # Redfish BootSourceOverrideTarget at start


class LabBmcs:
    """Starts, addresses and stops the lab's BMC processes."""

    def __init__(
        self, folder: Path, plans: Sequence[BmcPlan], notify_url: str, power_delay: int | None
    ) -> None:
        self.folder = folder
        self.plans = {plan.name: plan for plan in plans}
        self.notify_url = notify_url
        self.power_delay = power_delay
        self.sushy: list[SushyEmulator] = []
        self.emulator_of: dict[str, SushyEmulator] = {}  # Redfish host name -> its emulator
        self.ipmi: dict[str, IPMISimulator] = {}

    def start(self, timeout: float = 60.0) -> None:
        """Start every BMC side by side, then wait until each answers."""
        redfish = [p for p in self.plans.values() if p.kind in REDFISH_KINDS]
        users = {p.username: p.password for p in redfish}
        shards = -(-len(redfish) // SYSTEMS_PER_EMULATOR)
        for index in range(shards):
            members = redfish[index::shards]
            emulator = SushyEmulator(
                [
                    FakeSystem(
                        name=p.name,
                        uuid=p.system_uuid,
                        power_state="On" if p.power_on else "Off",
                        nics=p.nics,
                        drives=p.drives,
                        external_notifier=True,
                        boot_device=p.boot_device,
                    )
                    for p in members
                ],
                users=users,
                notify_url=f"{self.notify_url}/redfish",
                power_delay=self.power_delay,
                workdir=self.folder / ("redfish" if index == 0 else f"redfish-{index}"),
                exit_with_parent=True,
            )
            self.sushy.append(emulator)
            self.emulator_of.update({p.name: emulator for p in members})
            emulator.launch()
        for plan in self.plans.values():
            if plan.kind == "ipmi":
                sim = IPMISimulator(
                    users={plan.username: plan.password},
                    notify_url=f"{self.notify_url}/ipmi/{plan.name}",
                    workdir=self.folder / plan.name,
                    exit_with_parent=True,
                )
                self.ipmi[plan.name] = sim
                sim.launch()
        for emulator in self.sushy:
            emulator.wait_ready(timeout)
        for sim in self.ipmi.values():
            sim.wait_ready(timeout)

    def address(self, name: str) -> str:
        plan = self.plans[name]
        if plan.kind == "ipmi":
            return self.ipmi[name].address()
        return f"{plan.kind}+{self.redfish_url_of(name)}/redfish/v1/Systems/{plan.system_uuid}"

    def redfish_url_of(self, name: str) -> str:
        """The base URL of the emulator that serves Redfish host `name`."""
        return self.emulator_of[name].url

    @property
    def redfish_url(self) -> str:
        """The first emulator's base URL ("" without Redfish hosts); `redfish_url_of` names
        the one of a given host."""
        return self.sushy[0].url if self.sushy else ""

    def processes(self) -> list[tuple[str, int]]:
        """(what, pid) of every BMC process started."""
        found = []
        for index, emulator in enumerate(self.sushy):
            if emulator.process is not None:
                what = "sushy-emulator" if len(self.sushy) == 1 else f"sushy-emulator {index}"
                found.append((what, emulator.process.pid))
        for name, sim in self.ipmi.items():
            if sim.process is not None:
                found.append((f"ipmisim {name}", sim.process.pid))
        return found

    def stop(self) -> None:
        for emulator in self.sushy:
            emulator.stop()
        for sim in self.ipmi.values():
            sim.stop()


# --- reports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingPower:
    state: str  # On | Off | ForceRestart ...
    apply_time: float  # epoch seconds


def redfish_report(system: dict[str, Any]) -> tuple[str, BmcReport, PendingPower | None]:
    """(system uuid, report, pending power change) from the fake driver's notification."""
    uuid = str(system.get("uuid", ""))
    power = "on" if str(system.get("power_state", "")).lower() == "on" else "off"
    device = str(system.get("boot_device") or "Hdd")
    boot_image = (system.get("boot_image") or {}).get("Cd") or [None, True, False]
    media_file = boot_image[0] if len(boot_image) > 2 and boot_image[2] else None
    pending_raw = system.get("pending_power") or None
    pending = None
    if isinstance(pending_raw, dict) and "apply_time" in pending_raw:
        pending = PendingPower(
            str(pending_raw.get("power_state")), float(pending_raw["apply_time"])
        )
    report = BmcReport(
        power=power,
        boot_device=_REDFISH_BOOT.get(device.lower(), device.lower()),
        media_file=str(media_file) if media_file else None,
        event="redfish",
    )
    return uuid, report, pending


def ipmi_report(body: dict[str, Any]) -> BmcReport:
    """A report from our IPMI simulator's notification (see `metal3.bmc.ipmisim`)."""
    boot = body.get("boot") or {}
    device = str(boot.get("device") or "none") if boot.get("valid") else "none"
    event = str(body.get("event", ""))
    return BmcReport(
        power="on" if body.get("power") == "on" else "off",
        boot_device=device,
        reset=event == "reset",
        event=f"ipmi {event}",
    )


def poll_redfish_power(base_url: str, uuid: str, username: str, password: str) -> str:
    """Read a system (which makes the fake driver apply a due power change); its PowerState."""
    request = urllib.request.Request(f"{base_url}/redfish/v1/Systems/{uuid}")
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return str(json.loads(response.read()).get("PowerState", ""))
